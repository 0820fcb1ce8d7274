"""The SmolLM+TRM demo: a Gradio app (Space-ready: a Space runs this file) that answers a question with the thoughts
and without them, shows what each `<think>` thought and the time to answer, with sliders for the recursion's depth.

    pip install -e ".[demo]"
    python app.py --model outputs/quickstart/final      # or a Hub id; SMOLLM_TRM_MODEL sets the default
"""

import argparse
import os

from smollm_trm.demo import build_demo, load_demo_model

DEFAULT_MODEL = os.environ.get("SMOLLM_TRM_MODEL", "outputs/quickstart/final")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="A SmolLM+TRM folder or Hub id.")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="Run the model's own code (needed only when it is not this version's).")
    parser.add_argument("--port", type=int, default=None, help="Server port (default: Gradio's).")
    args = parser.parse_args(argv)
    model, tokenizer = load_demo_model(args.model, args.trust_remote_code)
    build_demo(model, tokenizer, args.model).launch(server_port=args.port)


if __name__ == "__main__":
    main()
