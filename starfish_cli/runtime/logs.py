"""What reaches the console: starfish's own messages and every library's warnings."""

import logging


class ConsoleFilter(logging.Filter):
    """Passes records of the `starfish` logger, warnings and errors of any logger, and everything
    of a logger made verbose (`hydra.verbose=timm` sets it to DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.name == "starfish" or record.name.startswith("starfish.")
                or record.levelno >= logging.WARNING
                or logging.getLogger(record.name).getEffectiveLevel() < logging.INFO)
