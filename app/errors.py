"""User-facing errors.

Every problem caused by input the user controls (a file, a flag, a device, the disk)
is raised as a `PPChatError` subclass whose message names the bad input and says how
to fix it. The CLI prints it as one line and exits with status 2; nothing else
should ever reach the user as a traceback.
"""


class PPChatError(Exception):
    """Base class: the message is shown to the user verbatim."""


class CheckpointError(PPChatError):
    """A checkpoint, config, tokenizer or voice file is missing, corrupt or of the wrong shape."""


class AudioError(PPChatError):
    """An audio device or audio file cannot be used."""


class SessionError(PPChatError):
    """A recorded session is missing, corrupt or cannot be written."""


class ConditioningCancelled(PPChatError):
    """A conversation's start gave up conditioning because a stop, a restart or a signal asked it
    to (`Conversation.abandon_start`): no conversation began and nothing was recorded."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (see `ppchat.cli`) so that every `finally` runs."""


def interruption(exc: BaseException) -> str | None:
    """Why a run was cut short by a signal, in words for `stop_reason`; None for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C, SIGINT)"
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)"
    return None
