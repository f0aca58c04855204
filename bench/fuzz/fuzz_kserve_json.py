"""Coverage-guided fuzzing (atheris) of the KServe v2 REST JSON (`infer` bodies) decoder, run as the server runs it.

    python bench/fuzz/fuzz_kserve_json.py -runs=200000          # or -max_total_time=60

A crash (an exception other than a 4xx ServingError, a 5xx, or decoded arrays above the budget)
stops the run and writes the input to ./crash-*. See harness.py for the property.
"""

import atheris

with atheris.instrument_imports(include=["serving"]):
    import harness

if __name__ == "__main__":
    harness.fuzz_main(harness.kserve_json_request, "kserve_json")
