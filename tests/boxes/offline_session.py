"""Run medistill commands in one process under a network audit hook (for test_yolo_training).

    python offline_session.py COMMANDS.json REPORT.json

COMMANDS.json holds a list of argument lists for ``medistill.cli.main``. REPORT.json
receives each command's exit status, every network access seen (DNS lookups, internet
socket connections, urllib requests), torch's thread count before and after each
command, and whether TensorFlow was ever imported.
"""

from __future__ import annotations

import json
import socket
import sys

network: list[str] = []


def audit(event: str, args: tuple) -> None:
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            network.append(f"connect {address}")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                   "urllib.Request", "http.client.connect"):
        network.append(f"{event} {args[:2]}")


def main() -> None:
    commands = json.loads(open(sys.argv[1]).read())
    sys.addaudithook(audit)
    from medistill.cli import main as medistill_main
    from medistill.console import setup_logging

    setup_logging()
    import torch  # the thread count a user's process starts with

    report = {"runs": [], "threads_at_start": torch.get_num_threads()}
    for argv in commands:
        before = _torch_threads()
        status = medistill_main(argv)
        report["runs"].append({"argv": argv, "status": status, "threads_before": before,
                               "threads_after": _torch_threads()})
    report["network"] = network
    report["tensorflow_loaded"] = "tensorflow" in sys.modules
    with open(sys.argv[2], "w") as stream:
        json.dump(report, stream, indent=2)


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


if __name__ == "__main__":
    main()
