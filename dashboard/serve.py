"""``nnvitals serve``: options and entry point of the web app.

::

    nnvitals serve [--port N] [--address A] [--dask local|ADDRESS] [--num-threads N]
                   [--allow-dir DIR ...] [--max-upload-mb MB] [--basic-auth FILE]
                   [--cookie-secret S] [--allow-websocket-origin HOST[:PORT] ...] [--use-xheaders]
                   [--oauth-provider P --oauth-key K --oauth-secret S ...] [--show]

The CLI's ``serve`` subcommand only delegates: :func:`add_serve_arguments` adds these options
to its parser and :func:`run_serve` runs the server. Options are checked before anything
starts: a bad value gives one line naming the option and what was expected, and a non-zero
exit (argparse's usage error for malformed values, :class:`NNVitalsError` for the rest).
Nothing heavy is imported here until :func:`run_serve` runs (``--help`` stays instant).

Run without the CLI: ``python -m dashboard.serve --port 5006``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PORT = 5006


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [0, 65535], got {v}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of megabytes, got {text}")
    return v


def _directory(text: str) -> Path:
    p = Path(text).expanduser()
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return p.resolve()


def _dask(text: str) -> str:
    from analyses.core.runner import parse_spec  # the one Dask address parser (imported on use)

    try:
        return parse_spec(text, cli=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _json_dict(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e.msg})") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(v).__name__}")
    return v


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``serve`` options to ``parser`` (the CLI's ``serve`` subparser)."""
    s = parser.add_argument_group("server")
    s.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)"
    )
    s.add_argument("--address", default=None, help="address to listen on (default: localhost)")
    s.add_argument(
        "--allow-websocket-origin", action="append", default=None, metavar="HOST[:PORT]",
        help="host a browser may connect from (repeatable; needed when serving on another address)",
    )  # fmt: skip
    s.add_argument(
        "--num-threads", type=_positive_int, default=None, metavar="N",
        help="caps the analyses run at once, which is at most one per core (default: cores, 4..16)",
    )  # fmt: skip
    s.add_argument(
        "--use-xheaders", action="store_true",
        help="behind a reverse proxy: take client addresses from X-Forwarded-For / X-Real-Ip (the login "
        "lockout counts failures per client address; without this every client shares the proxy's)",
    )  # fmt: skip
    s.add_argument("--show", action="store_true", help="open the app in a browser")
    r = parser.add_argument_group("analyses")
    r.add_argument(
        "--dask", type=_dask, default=None, metavar="local|ADDRESS",
        help="run analyses on Dask: 'local' (a LocalCluster) or a scheduler address tcp://HOST:PORT "
        "(default: threads in the server process)",
    )  # fmt: skip
    r.add_argument(
        "--allow-dir", type=_directory, action="append", default=[], metavar="DIR",
        help="let users pick model files under DIR on the server (repeatable; nothing outside is reachable)",
    )  # fmt: skip
    r.add_argument(
        "--max-upload-mb", type=_positive_float, default=None, metavar="MB",
        help="largest model file a user may upload, in MB (default 512)",
    )  # fmt: skip
    r.add_argument(
        "--default-model", default="mlp", metavar="NAME", help="demo model the app opens on (default mlp)"
    )
    a = parser.add_argument_group("authentication")
    a.add_argument(
        "--basic-auth", type=Path, default=None, metavar="FILE",
        help="require a login: FILE is a JSON object {user: password}, or a text file holding one password",
    )  # fmt: skip
    a.add_argument(
        "--cookie-secret", default=None, metavar="S", help="secret to sign login cookies (default: random)"
    )
    a.add_argument(
        "--oauth-provider", default=None, metavar="P", help="Panel OAuth provider (github, google, ...)"
    )
    a.add_argument("--oauth-key", default=None, metavar="K", help="OAuth client id")
    a.add_argument("--oauth-secret", default=None, metavar="S", help="OAuth client secret")
    a.add_argument("--oauth-redirect-uri", default=None, metavar="URI", help="OAuth redirect URI")
    a.add_argument(
        "--oauth-extra-params", type=_json_dict, default=None, metavar="JSON", help="OAuth extra parameters"
    )
    a.add_argument("--oauth-encryption-key", default=None, metavar="KEY", help="key encrypting OAuth tokens")
    a.add_argument("--oauth-jwt-user", default=None, metavar="KEY", help="JWT claim naming the user")
    a.add_argument(
        "--oauth-optional",
        action="store_true",
        default=None,
        help="let visitors in as guests without logging in",
    )
    return parser


def _basic_auth(path: Path | None) -> str | None:
    """The ``basic_auth`` Panel takes: the JSON file's path, or the single password in the file."""
    from analyses.core.errors import NNVitalsError

    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NNVitalsError(f"--basic-auth {path}: no such file") from None
    except IsADirectoryError:
        raise NNVitalsError(f"--basic-auth {path}: is a directory; expected a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NNVitalsError(
            f"--basic-auth {path}: cannot read ({getattr(e, 'strerror', None) or e})"
        ) from None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            users = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise NNVitalsError(f"--basic-auth {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not users or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()):
            raise NNVitalsError(
                f"--basic-auth {path}: expected a JSON object of user names to non-empty passwords"
            )
        return str(path.resolve())
    lines = [ln for ln in stripped.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise NNVitalsError(
            f"--basic-auth {path}: expected one password on one line, or a JSON object {{user: password}}"
        )
    return lines[0].strip()


def settings_from_args(args: argparse.Namespace):
    """The :class:`~dashboard.settings.AppSettings` the options describe (checked)."""
    from analyses.core.errors import NNVitalsError
    from analyses.zoo import DEMO_MODELS

    from .components.model_picker import check_allow_dirs
    from .settings import DEFAULT_MAX_UPLOAD_MB, AppSettings, default_threads

    if args.default_model not in DEMO_MODELS:
        raise NNVitalsError(f"--default-model {args.default_model}: expected one of {', '.join(DEMO_MODELS)}")
    return AppSettings(
        allow_dirs=check_allow_dirs(args.allow_dir),
        runner=args.dask or "threads",
        num_threads=args.num_threads or default_threads(),
        max_upload_mb=args.max_upload_mb or DEFAULT_MAX_UPLOAD_MB,
        default_model=args.default_model,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Start the server with the parsed options; returns the exit code when it stops."""
    # before NumPy loads: its OpenBLAS starts no thread pool of its own in the server (see
    # dashboard.app.limit_blas_threads); an explicit setting is kept
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from analyses.core.errors import NNVitalsError

    settings = settings_from_args(args)
    basic_auth = _basic_auth(args.basic_auth)
    if args.oauth_provider and basic_auth:
        raise NNVitalsError("--basic-auth and --oauth-provider: choose one way to log in")
    if args.oauth_provider and not (args.oauth_key and args.oauth_secret):
        raise NNVitalsError("--oauth-provider: also give --oauth-key and --oauth-secret")
    oauth = {
        "provider": args.oauth_provider,
        "key": args.oauth_key,
        "secret": args.oauth_secret,
        "redirect_uri": args.oauth_redirect_uri,
        "extra_params": args.oauth_extra_params,
        "encryption_key": args.oauth_encryption_key,
        "jwt_user": args.oauth_jwt_user,
        "optional": args.oauth_optional,
    }
    from .server import serve

    try:
        serve(
            settings,
            port=args.port,
            address=args.address,
            show=args.show,
            basic_auth=basic_auth,
            cookie_secret=args.cookie_secret,
            oauth=oauth if args.oauth_provider else None,
            allow_websocket_origin=args.allow_websocket_origin,
            **({"use_xheaders": True} if args.use_xheaders else {}),
        )
    except OSError as e:
        if e.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise NNVitalsError(
                f"--port {args.port}: already in use; pick another port (or 0 for any)"
            ) from None
        if e.errno == 99:
            raise NNVitalsError(f"--address {args.address}: not an address of this machine") from None
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dashboard.serve [options]``: the same as ``nnvitals serve``."""
    parser = argparse.ArgumentParser(prog="nnvitals serve", description="Serve the nnvitals web app.")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from analyses.core.errors import NNVitalsError

        if isinstance(e, NNVitalsError):
            print(f"nnvitals: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
