"""``xmm demo``: the end-to-end proof - teach the real SmolLM2 new senses on this machine and show it.

Generates datasets with known answers (train and held-out splits), trains bridges with an X-LLM-style staged plan on
the real frozen LLM and encoders, evaluates before and after on the held-out splits and answers a few held-out
examples in chat form.
"""

from xmm.demo.runner import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
