"""Coverage-guided fuzzing (atheris) of the TF Serving gRPC `PredictRequest` decoder, run as the server runs it:
requests built field by field from the fuzz bytes (even first byte) or parsed from them (odd first byte).

    python bench/fuzz/fuzz_grpc.py -runs=200000          # or -max_total_time=60

A crash (an exception other than a 4xx ServingError, a 5xx, or decoded arrays above the budget)
stops the run and writes the input to ./crash-*. See harness.py for the property.
"""

import atheris

with atheris.instrument_imports(include=["serving"]):
    import harness

if __name__ == "__main__":
    harness.fuzz_main(harness.grpc_structured, "grpc")
