"""`python -m irpo_eval.lm_eval_cli ...`: lm-eval's own command line, with the irpo-vllm backend.

lm-eval finds model backends only in its own registry, so `lm_eval --model irpo-vllm` cannot
see ours; this runs lm-eval's CLI after registering it. Example:

    python -m irpo_eval.lm_eval_cli --include_path evals/ --tasks irpo_gsm8k_maj \\
        --model irpo-vllm --model_args pretrained=PATH --apply_chat_template
"""

from lm_eval.__main__ import cli_evaluate

import irpo_eval.backend  # noqa: F401  (registers irpo-vllm)

if __name__ == "__main__":
    cli_evaluate()
