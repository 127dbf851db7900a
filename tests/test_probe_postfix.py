"""`neoforge check` against a real Postfix (STARTTLS from a test CA, SASL login), as users will run it."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from tests.postfix import Postfix, postfix_server  # noqa: F401 - a fixture


def test_check_against_postfix(postfix_server: Postfix, settings_env: Any) -> None:  # noqa: F811 - the fixture
    from neoforge.cli import main

    postfix = postfix_server
    settings_env(
        SMTP_HOST="localhost",
        SMTP_PORT=str(postfix.port),
        SMTP_STARTTLS="true",
        SMTP_CA_FILE=str(postfix.ca_file),
        SMTP_USER=postfix.user,
        SMTP_PASSWORD="not-" + postfix.password,
    )
    refused = CliRunner().invoke(main, ["check"])
    assert refused.output.startswith("smtp: login refused (auth): 535 "), refused.output
    assert postfix.password not in refused.output
    assert refused.exit_code == 1

    # The right password, the server verified against the CA file with its name checked.
    settings_env(SMTP_PASSWORD=postfix.password)
    ok = CliRunner().invoke(main, ["check"])
    assert ok.output == (
        f"smtp: ok (localhost:{postfix.port}, STARTTLS, verified against SMTP_CA_FILE, "
        "AUTH as m***@neoforge.test)\n"
    )
    assert ok.exit_code == 0
