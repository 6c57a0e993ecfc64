"""Post-processing for the ``dense_pipeline`` ensemble: the top-k classes of each row of
probabilities, as label strings (BYTES) and their scores, most likely first."""

import json

import inferd.backends.python_api as pb_utils
import numpy as np

LABELS = np.array([f"class_{i}".encode() for i in range(10)], dtype=object)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.k = int(config["parameters"]["top_k"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            probs = pb_utils.get_input_tensor_by_name(request, "PROBS").as_numpy()
            # argsort is stable, so equal scores keep the lower class first.
            top = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
            scores = np.take_along_axis(probs, top, axis=1).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("LABELS", LABELS[top]),
                        pb_utils.Tensor("SCORES", scores),
                    ]
                )
            )
        return responses
