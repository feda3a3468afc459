"""``fedpriv certs``: make and inspect the deployment's certificates and node keys."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from certs import files, issue, listing, node_keys, verify

_SUBCOMMANDS = ("ca", "server", "node", "admit", "list")
_DESCRIPTION = "Make and inspect the TLS certificates and SuperNode keys of a deployment."


def _common(days_default: int | None) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--dir", type=Path, default=files.DEFAULT_DIR,
                        help=f"folder of the certificates and keys (default {files.DEFAULT_DIR})")
    if days_default is not None:
        parent.add_argument("--days", type=int, default=days_default,
                            help=f"validity in days (default {days_default})")
    return parent


def _force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace existing files (by default they are never overwritten)")


def _ca_key_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-key-dir", type=Path, default=None, metavar="DIR",
                        help=f"folder of the CA's private key, apart from --dir (default: "
                             f"{files.CA_KEY_DIR_NAME}/ beside --dir); keep it offline if you can")


def _key_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-type", choices=issue.KEY_TYPES, default="ec",
                        help="ec = ECDSA P-256 (default), rsa = RSA 3072")


def add_certs_arguments(
    target: argparse.ArgumentParser | argparse._SubParsersAction,
) -> argparse.ArgumentParser:
    """Add the ``certs`` subcommands.

    ``target`` is either the ``certs`` parser itself, or a subparsers object to which a
    ``certs`` parser is added. Returns the ``certs`` parser.
    """
    if isinstance(target, argparse._SubParsersAction):
        parser = target.add_parser("certs", help="make and inspect TLS certificates and node keys",
                                   description=_DESCRIPTION)
    else:
        parser = target
    sub = parser.add_subparsers(dest="certs_command", metavar="{" + ",".join(_SUBCOMMANDS) + "}",
                                required=True)

    ca = sub.add_parser("ca", parents=[_common(issue.CA_DAYS)],
                        help="create the certificate authority (coordinator)")
    ca.add_argument("--common-name", default="fedpriv federation CA",
                    help="the CA's subject common name")
    _ca_key_dir(ca)
    _key_type(ca)
    _force(ca)

    server = sub.add_parser("server", parents=[_common(issue.SERVER_DAYS)],
                            help="issue the SuperLink's TLS certificate from the CA (coordinator)")
    server.add_argument("--dns", action="append", default=[], metavar="NAME",
                        help="host name partners dial (repeatable)")
    server.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                        help="IP address partners dial (repeatable)")
    server.add_argument("--no-loopback", dest="loopback", action="store_false",
                        help="leave out localhost and 127.0.0.1, which are included by default "
                             "because the SuperLink's own SuperExec connects over loopback")
    _ca_key_dir(server)
    _key_type(server)
    _force(server)

    node = sub.add_parser("node", parents=[_common(None)],
                          help="create a node's authentication and ledger key pairs (partner)")
    node.add_argument("name", help="node name: the files are node-NAME.key/.pub "
                                   "(authentication) and node-NAME.ledger.key/.pub (ledger)")
    _force(node)

    admit = sub.add_parser("admit", parents=[_common(None)],
                           help="check a partner's two public keys and keep them as "
                                "node-NAME.pub and ledger-keys/NAME.pub (coordinator)")
    admit.add_argument("name", help="the partner's node name")
    admit.add_argument("public_key", type=Path, metavar="PUBLIC_KEY",
                       help="the node-NAME.pub file the partner sent")
    admit.add_argument("ledger_key", type=Path, metavar="LEDGER_KEY",
                       help="the node-NAME.ledger.pub file the partner sent")
    _force(admit)

    sub.add_parser("list", parents=[_common(None)],
                   help="list certificates and node keys with expiry dates")
    return parser


def _print_files(issued: files.Issued) -> None:
    for path in issued.files:
        print(f"wrote {path}")
    if issued.not_after is not None:
        print(f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC")
    if issued.fingerprint is not None:
        print(f"fingerprint {issued.fingerprint}")
    if issued.ledger_key is not None:
        print(f"ledger key {issued.ledger_key}")


def _run_ca(args: argparse.Namespace) -> None:
    issued = issue.create_ca(args.dir, days=args.days, key_type=args.key_type,
                             common_name=args.common_name, force=args.force,
                             key_dir=args.ca_key_dir)
    _print_files(issued)
    cert_path, key_path = issued.files
    print(f"send {cert_path} to every partner; keep {key_path} private, away from the "
          "coordinator's server (offline if you can)")


def _run_server(args: argparse.Namespace) -> None:
    issued = issue.issue_server_cert(args.dir, dns_names=args.dns, ip_addresses=args.ip,
                                     days=args.days, key_type=args.key_type,
                                     include_loopback=args.loopback, force=args.force,
                                     ca_key_dir=args.ca_key_dir)
    _print_files(issued)
    cert = verify.check_certificate(issued.files[0])
    print("names: " + ", ".join(verify.certificate_names(cert)))


def _run_node(args: argparse.Namespace) -> None:
    issued = node_keys.create_node_keys(args.dir, args.name, force=args.force)
    _print_files(issued)
    key_path, pub_path, ledger_path, ledger_pub_path = issued.files
    print(f"send {pub_path} and {ledger_pub_path} to the coordinator and read them the "
          f"fingerprint and ledger key; {key_path} and {ledger_path} never leave this machine")
    print(f"start the node with: fedpriv client ... --node-key {key_path}")


def _run_admit(args: argparse.Namespace) -> None:
    issued = node_keys.admit_node_key(args.dir, args.name, args.public_key, args.ledger_key,
                                      force=args.force)
    _print_files(issued)
    print("confirm the fingerprint and ledger key with the partner; `fedpriv server "
          f"--certs-dir {args.dir}` then registers the node and accepts its records only "
          "under that ledger key")


def _run_list(args: argparse.Namespace) -> None:
    if not args.dir.is_dir():
        what = "is not a folder" if args.dir.exists() else "does not exist"
        raise files.CertError(f"invalid --dir {args.dir}: {what}; make certificates there with "
                              f"`fedpriv certs ca --dir {args.dir}`")
    now = datetime.now(UTC)
    certs = listing.list_certificates(args.dir)
    nodes = listing.list_node_keys(args.dir)
    listed = {info.path for info in certs}
    unreadable = [p for p in sorted(args.dir.glob("*.pem")) if p not in listed]
    if not certs and not nodes and not unreadable:
        print(f"nothing in {args.dir}")
        return
    for path in unreadable:
        print(f"{path}  [unreadable]  not a PEM certificate")
    for info in certs:
        role = "CA" if info.is_ca else "certificate"
        print(f"{info.path}  [{role}]  {info.status(now)}")
        print(f"  subject  {info.subject}")
        if info.issuer != info.subject:
            print(f"  issuer   {info.issuer}")
        if info.names:
            print(f"  names    {', '.join(info.names)}")
        print(f"  expires  {info.not_after:%Y-%m-%d} ({info.days_left(now)} days left)")
    for node in nodes:
        held = [p.name for p in (node.private_key, node.public_key) if p is not None]
        print(f"node {node.name}  [{' + '.join(held)}]  {node.problem or 'ok'}")
        if node.fingerprint:
            print(f"  fingerprint  {node.fingerprint}")


_RUNNERS = {"ca": _run_ca, "server": _run_server, "node": _run_node, "admit": _run_admit,
            "list": _run_list}


def run_certs_command(args: argparse.Namespace) -> int:
    """Run the parsed ``certs`` subcommand; user mistakes raise ``FedPrivError``."""
    _RUNNERS[args.certs_command](args)
    return 0
