"""Reusable fakes for tests: real servers speaking real wire formats, never mocks of our code."""
from .anthropic_responders import (  # noqa: F401
    DEFAULT_RESPONDERS, Fault, default_discovery, default_verdict, forced_tool, judge_sets,
    message_text, task_input,
)
from .fake_anthropic import FakeAnthropic, RecordedRequest  # noqa: F401
