"""Generate the Ed25519 key pair the trainer signs models with.

  dal keys generate --config trainer.toml      writes [models] private_key and public_key
  dal keys generate --private k.pem --public k.pub

The private key (mode 0600) stays on the trainer; copy the public key to every agent, which
runs only models signed by it. An existing key is never replaced without --force: agents trust
the old public key until they get the new one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dal.errors import ConfigError
from dal.link.signing import generate_keypair
from dal.trainer.config import load_trainer_config, resolve_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="write a new key pair (PEM)")
    gen.add_argument("--config", type=Path, help="trainer TOML: use its [models] key paths")
    gen.add_argument("--private", type=Path, help="private key file (overrides the config)")
    gen.add_argument("--public", type=Path, help="public key file (overrides the config)")
    gen.add_argument("--force", action="store_true", help="replace existing keys (key rotation)")


def key_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.config is None and (args.private is None or args.public is None):
        raise ConfigError(
            "dal keys generate needs --config or both --private and --public",
            hint="e.g. dal keys generate --config /etc/dal/trainer.toml",
        )
    private, public = args.private, args.public
    if args.config is not None:
        config = load_trainer_config(args.config)
        private = private or resolve_path(config, config.models.private_key)
        public = public or resolve_path(config, config.models.public_key)
    return private, public


def run(args: argparse.Namespace) -> int:
    private, public = key_paths(args)
    key = generate_keypair(private, public, overwrite=args.force)
    print(f"key id {key}")
    print(f"private key: {private} (keep it on the trainer, mode 0600)")
    print(f"public key:  {public} (copy it to every agent)")
    return 0
