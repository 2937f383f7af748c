"""`cinema serve`: a small local web page to upload an exam and read its analysis report.

Above `cinema.analysis` in the layering: it uses `cinema.io.read_study`, `cinema.analysis.analyze_study` /
`write_analysis` and the segmentation model loader, and nothing uses it but the command line.
"""

from cinema.serve.server import DEFAULT_HOST, DEFAULT_PORT, CinemaServer, ServeSettings, is_loopback, make_server
from cinema.serve.upload import Limits, UploadRejected, find_exam, unpack_upload

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "CinemaServer",
    "Limits",
    "ServeSettings",
    "UploadRejected",
    "find_exam",
    "is_loopback",
    "make_server",
    "unpack_upload",
]
