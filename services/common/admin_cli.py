"""`lmforge-admin`: operator commands for the servers' API keys (runs on the server machine, on the key
file both servers read: $LMFORGE_HOME/keys.json unless --keys).

    lmforge-admin keys create --tenant acme --role member [--expires-in-days 90]   # prints the key once
    lmforge-admin keys list                                                         # never shows a key
    lmforge-admin keys revoke ID
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.common.auth import ROLES, KeyAdminError, KeyFile, default_keys_file


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds)) if seconds else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmforge-admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=Path, default=None,
                        help="the key file (default: $LMFORGE_HOME/keys.json, or .lmforge/keys.json)")
    groups = parser.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="create, list and revoke API keys").add_subparsers(dest="command",
                                                                                             required=True)
    create = keys.add_parser("create", help="a new key (printed once; only its hash is stored)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--expires-in-days", type=float, default=0.0, help="0: never (default)")
    keys.add_parser("list", help="every key: id, tenant, role, state, dates (never the key)")
    revoke = keys.add_parser("revoke", help="refuse a key from the next call on")
    revoke.add_argument("id")
    args = parser.parse_args(argv)

    key_file = KeyFile(args.keys or default_keys_file())
    try:
        if args.command == "create":
            key, record = key_file.create(args.tenant, args.role, args.expires_in_days)
            print(key)
            print(f"key {record.id}: tenant {record.tenant}, role {record.role}, expires "
                  f"{_when(record.expires_at) if record.expires_at else 'never'} (store the key now: it is not "
                  "kept)", file=sys.stderr)
        elif args.command == "list":
            now = time.time()
            print(f"{'ID':<10}{'TENANT':<16}{'ROLE':<8}{'STATE':<9}{'CREATED':<18}EXPIRES")
            for record in sorted(key_file.records().values(), key=lambda r: r.created_at):
                print(f"{record.id:<10}{record.tenant:<16}{record.role:<8}{record.state(now):<9}"
                      f"{_when(record.created_at):<18}{_when(record.expires_at)}")
        else:
            record = key_file.revoke(args.id)
            print(f"key {record.id} (tenant {record.tenant}) revoked")
    except KeyAdminError as exc:
        print(f"lmforge-admin: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
