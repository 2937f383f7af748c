"""``cinema serve``: a local web page to upload an exam (zip of DICOM / NIfTI, or a NIfTI file) and read its report.

Binds to 127.0.0.1 unless ``--host`` says otherwise; the server itself is `cinema.serve`.
"""

from __future__ import annotations

import argparse

from cinema.cli.options import add_precision_option, amp_of

HELP = "serve a local web page to upload an exam (zip of DICOM or NIfTI) and view its analysis report"
# cinema.serve.server's defaults, written out so that `cinema --help` does not import the server (tests/test_serve.py)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; there is no login, so think twice "
        "before 0.0.0.0)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    parser.add_argument(
        "--weights", default=None, help="SAX segmentation model folder, config.yaml or .safetensors (default: shipped)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=32, help="slices (2-D model) or frames (3-D) per pass")
    add_precision_option(parser)
    parser.add_argument("--max-upload-mb", type=int, default=512, help="largest upload accepted (default 512)")
    parser.add_argument(
        "--max-unpacked-mb", type=int, default=2048, help="largest unpacked size of an upload (default 2048)"
    )
    parser.add_argument(
        "--keep-hours", type=float, default=1.0, help="hours a finished job's results stay available (default 1)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        help="seconds a whole upload may take to arrive (default 120; raise it for big uploads over a slow network)",
    )
    parser.add_argument(
        "--max-jobs-per-client",
        type=int,
        default=2,
        help="exams one client address may have uploading or being analysed at once (default 2)",
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import signal

    from cinema.cli import CinemaError
    from cinema.serve.server import ServeSettings, is_loopback, make_server
    from cinema.serve.upload import MB, Limits

    if not 0 <= args.port <= 65535:
        raise CinemaError(f"--port must be 0..65535, got {args.port}")
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-unpacked-mb", args.max_unpacked_mb)):
        if value < 1:
            raise CinemaError(f"{flag} must be >= 1, got {value}")
    if args.batch_size < 1:
        raise CinemaError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.keep_hours <= 0:
        raise CinemaError(f"--keep-hours must be > 0, got {args.keep_hours}")
    if not 0 < args.request_timeout <= 86400:  # also refuses nan and inf, which no socket timeout takes
        raise CinemaError(f"--request-timeout must be > 0 and at most 86400 seconds, got {args.request_timeout}")
    if args.max_jobs_per_client < 1:
        raise CinemaError(f"--max-jobs-per-client must be >= 1, got {args.max_jobs_per_client}")

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        limits=Limits(max_upload_bytes=args.max_upload_mb * MB, max_unpacked_bytes=args.max_unpacked_mb * MB),
        job_ttl_s=args.keep_hours * 3600.0,
        request_timeout_s=args.request_timeout,
        max_jobs_per_client=args.max_jobs_per_client,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        amp=amp_of(args),
    )
    # Our own log lines only (job ids, sizes, times): other modules' INFO messages may name input paths.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    serve_logger = logging.getLogger("cinema.serve")
    serve_logger.addHandler(handler)
    serve_logger.setLevel(logging.INFO)
    serve_logger.propagate = False

    try:
        server = make_server(settings)
    except OSError as err:
        raise CinemaError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err})") from None
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can upload exams and read the "
            "results (no login, no encryption)"
        )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (e.g. from a service manager) cleans up as Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    print(f"CineMA is serving on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping; removing every job folder")
    finally:
        server.server_close()
    return 0
