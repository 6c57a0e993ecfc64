"""A decoupled model in the flow of Triton's repeat example: one response per element of IN,
the i-th after DELAY[i] milliseconds, sent from a thread the model starts; ``execute`` returns
after WAIT milliseconds, so one instance streams several requests at once. The final flag is
sent alone once every element went out (an empty IN sends only the flag)."""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
            if values.shape != delays.shape:
                raise pb_utils.TritonModelException(
                    f"expected IN and DELAY shape to match, got {list(values.shape)} and {list(delays.shape)}."
                )
            thread = threading.Thread(target=self.respond, args=(request.get_response_sender(), values, delays))
            thread.start()
            self.threads = [t for t in self.threads if t.is_alive()] + [thread]
            wait = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()
            time.sleep(wait[0] / 1000)
        return None  # decoupled: the responses go through the senders

    def respond(self, sender, values, delays):
        for i, (value, delay) in enumerate(zip(values, delays)):
            time.sleep(delay / 1000)
            if sender.is_cancelled():  # the client went away: stop early
                break
            outputs = [
                pb_utils.Tensor("OUT", np.array([value], np.int32)),
                pb_utils.Tensor("IDX", np.array([i], np.uint32)),
            ]
            sender.send(pb_utils.InferenceResponse(outputs))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join()
