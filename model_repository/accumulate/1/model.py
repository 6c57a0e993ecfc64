"""The running sum of INPUT over a sequence, kept by the server as the sequence's implicit state."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            ready = pb_utils.get_input_tensor_by_name(request, "READY").as_numpy()
            total = pb_utils.get_input_tensor_by_name(request, "SUM_IN").as_numpy() + value * ready
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", total), pb_utils.Tensor("SUM_OUT", total)])
            )
        return responses
