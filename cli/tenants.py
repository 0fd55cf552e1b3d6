"""`ocrq tenants secret`: print a tenant's webhook signing secret from OCRQ_DATABASE_URL."""

from __future__ import annotations

import click

from cli.keys import _open_database


@click.group()
def tenants() -> None:
    """Show tenant settings stored in OCRQ_DATABASE_URL."""


@tenants.command("secret")
@click.option("--tenant", "tenant_name", required=True, help="Tenant name, as in keys create.")
def secret(tenant_name: str) -> None:
    """Print the secret that signs deliveries to the tenant's job and batch webhook_url.

    Receivers verify the webhook-signature header with it. Endpoints made with
    POST /v1/webhooks/endpoints have their own secrets.
    """
    from core.tenants import tenant_webhook_secret

    with _open_database() as database:
        click.echo(tenant_webhook_secret(database, name=tenant_name))
