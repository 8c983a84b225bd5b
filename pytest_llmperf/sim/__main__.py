"""``python -m pytest_llmperf.sim``: run the simulator until SIGTERM/SIGINT.

Every :class:`SimConfig` field is a flag (``decode_ms`` → ``--decode-ms``), except ``faults`` (repeat
``--fault KIND:...``), ``busy_poll`` (``--busy-poll``, a switch) and the fields on by default, which a
``--no-...`` switch turns off (``--no-uvloop``, ``--no-prefix-cache``). On readiness one line
``LLMPERF_SIM_READY <url>`` goes to stdout; ``--port-file`` also gets the port, written atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_llmperf._files import write_text_atomic
from pytest_llmperf.errors import SpecError
from pytest_llmperf.sim.faults import FaultSpec, parse_fault
from pytest_llmperf.sim.model import USAGE_STYLES, SimConfig


def _fault(text: str) -> FaultSpec:
    try:
        return parse_fault(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmperf.sim",
        description="Loopback OpenAI-compatible streaming server with a continuous-batching timing model.",
    )
    for f in dataclasses.fields(SimConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: %(default)s)"
        if f.name == "faults":
            parser.add_argument(
                "--fault", dest="faults", action="append", type=_fault, default=[], metavar="SPEC",
                help="inject a fault: KIND:every=N|rate=P[,after=N][,seconds=S]; repeatable",
            )  # fmt: skip
        elif f.name == "uvloop":
            parser.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="use asyncio's loop")
        elif f.name == "busy_poll":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.default is True:
            off = "--no-" + f.name.replace("_", "-")
            parser.add_argument(
                off, dest=f.name, action="store_false", help=f"{f.metadata['help']} (on; this turns it off)"
            )
        elif f.name == "usage_style":
            parser.add_argument(flag, default=f.default, choices=USAGE_STYLES, help=help_text)
        else:
            kind = type(f.default)
            metavar = {int: "N", float: "X"}.get(kind, f.name.split("_")[-1].upper())
            parser.add_argument(flag, type=kind, default=f.default, metavar=metavar, help=help_text)
    parser.add_argument(
        "--port-file", type=Path, metavar="PATH", help="also write the bound port to this file (atomically)"
    )
    return parser


async def _main(config: SimConfig, port_file: Path | None) -> None:
    from pytest_llmperf.sim.app import READY_PREFIX, serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
            loop.add_signal_handler(sig, stop.set)

    def ready(url: str) -> None:
        if port_file is not None:
            write_text_atomic(port_file, url.rsplit(":", 1)[1] + "\n")
        print(f"{READY_PREFIX} {url}", flush=True)

    await serve(config, on_ready=ready, stop=stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    port_file = args.pop("port_file")
    args["faults"] = tuple(args["faults"])
    try:
        config = SimConfig(**args)
    except SpecError as exc:
        parser.error(str(exc))
    from pytest_llmperf.sim.app import new_event_loop

    loop = new_event_loop(config.uvloop)
    try:
        loop.run_until_complete(_main(config, port_file))
    except OSError as exc:
        print(f"llmperf-sim: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
