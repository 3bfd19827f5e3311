"""A site's credentials bundle: what ``fedhub site add`` hands to the site's operator.

One JSON file, mode 0600: the site's name and backend, where NATS is and the NATS user
that may touch only this site's subjects, and the agent's private key (its public half is
enrolled in the log). It is never put into the log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError


class BundleError(ValueError):
    """A bundle that cannot be read; the message says which file and why."""


class Bundle(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int = 1
    site: str
    backend: str
    nats_url: str  # without credentials
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    inbox_prefix: str = ""
    agent_key_pem: SecretStr
    tunnel: bool = True

    def nats_url_with_credentials(self) -> str:
        """The NATS URL with user and password embedded (for the agent's connection)."""
        if not self.nats_user:
            return self.nats_url
        scheme, _, rest = self.nats_url.partition("://")
        return f"{scheme}://{self.nats_user}:{self.nats_password.get_secret_value()}@{rest}"

    def write(self, path: Path) -> None:
        """Write the bundle readable by its owner only (fails if it exists)."""
        data = self.model_dump(mode="json")
        data["nats_password"] = self.nats_password.get_secret_value()
        data["agent_key_pem"] = self.agent_key_pem.get_secret_value()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)

    @classmethod
    def read(cls, path: Path) -> Bundle:
        """Load a bundle; raises BundleError with the reason."""
        try:
            return cls.model_validate_json(path.read_text())
        except OSError as exc:
            raise BundleError(f"cannot read credentials bundle {path}: {exc}") from exc
        except ValidationError as exc:
            raise BundleError(f"{path} is not a fedhub credentials bundle: "
                              f"{exc.errors()[0]['msg']}") from exc
