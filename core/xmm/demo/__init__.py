"""``xmm demo``: the end-to-end proof - teach the real SmolLM2 new senses on this machine and show it.

The tasks come from the installed modality plugins (``xmm_demo_tasks`` hook): each generates data with known answers
(train and held-out splits), names the recipe it trains with (``xmm_recipes`` hook), and how it is scored. The demo
trains all chosen tasks in one X-LLM-style staged plan on the real frozen LLM and encoders, evaluates before and
after on the held-out splits and answers a few held-out examples in chat form.
"""

from xmm.demo.runner import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
