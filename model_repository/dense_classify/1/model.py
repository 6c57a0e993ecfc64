"""Pre- and post-processing around the bundled ``dense`` classifier, as a Python model.

* pre: standardize each row of raw features (zero mean, unit variance);
* call ``dense`` through its own scheduler (BLS): one call for all requests of a batch;
* post: the most likely class as a label, and its probability.

On Triton the same file runs with ``import triton_python_backend_utils as pb_utils``.
"""

import json

import inferd.backends.python_api as pb_utils
import numpy as np

LABELS = np.array([f"class_{i}".encode() for i in range(10)], dtype=object)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.classifier = config["parameters"]["classifier"]["string_value"]

    def execute(self, requests):
        features = [pb_utils.get_input_tensor_by_name(r, "FEATURES").as_numpy() for r in requests]
        rows = np.concatenate(features)
        mean = rows.mean(axis=1, keepdims=True)
        std = rows.std(axis=1, keepdims=True) + 1e-6
        call = pb_utils.InferenceRequest(
            model_name=self.classifier,
            inputs=[pb_utils.Tensor("INPUT", ((rows - mean) / std).astype(np.float32))],
            requested_output_names=["PROBS"],
        )
        response = call.exec()
        if response.has_error():
            return [pb_utils.InferenceResponse(output_tensors=[], error=response.error()) for _ in requests]
        probs = pb_utils.get_output_tensor_by_name(response, "PROBS").as_numpy()
        best = probs.argmax(axis=1)
        label = LABELS[best].reshape(-1, 1)
        score = probs[np.arange(len(best)), best].reshape(-1, 1).astype(np.float32)
        responses, start = [], 0
        for f in features:
            end = start + len(f)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("LABEL", label[start:end]),
                        pb_utils.Tensor("SCORE", score[start:end]),
                    ]
                )
            )
            start = end
        return responses
