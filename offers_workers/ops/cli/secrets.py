"""``secrets``: payment secrets kept at rest (Plaid access tokens and account ids)."""

from __future__ import annotations

import click

from offers_workers.ops.cli.common import err_console, fail, print_json, runtime_or_exit

#: Offers re-sealed per transaction: short locks, and a run stopped midway keeps what it did.
BATCH = 200


@click.group("secrets")
def secrets_group() -> None:
    """Payment secrets kept at rest."""


@secrets_group.command("rotate")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def secrets_rotate(as_json: bool) -> None:
    """Re-seal every kept Plaid token and account id under the first key of OFFERS_PAYMENT_SECRET_KEYS
    (put the new key first, the old one after it; once this reports none left, drop the old key).
    Safe to run twice, or while the fleet runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from offers_workers.store import payment_secrets

    rt = runtime_or_exit()
    keys = rt.settings.payment_keys
    with rt.db.transaction() as conn:
        total = payment_secrets.count_stale_offers(conn, keys)
    offers = 0
    missing: list[str] = []
    after = ""
    with Progress(TextColumn("[bold]re-sealing"), BarColumn(), MofNCompleteColumn(), console=err_console) as bar:
        task = bar.add_task("offers", total=total)
        while True:
            with rt.db.transaction() as conn:
                done, unknown = payment_secrets.reseal_offers(conn, keys, after=after, limit=BATCH)
            if not done and not unknown:
                break
            offers += len(done)
            missing += unknown
            after = max(done + unknown)
            bar.update(task, completed=offers + len(missing))
    with rt.db.transaction() as conn:
        dead_letters, dead_letters_missing = payment_secrets.reseal_dead_letters(conn, keys)
    summary = {
        "key": keys.current,
        "offers": offers,
        "dead_letters": dead_letters,
        "key_missing": len(missing) + dead_letters_missing,
    }
    if as_json:
        print_json(summary)
    else:
        click.echo(f"re-sealed {offers} offer(s) and {dead_letters} dead letter(s) under key {keys.current}")
    if summary["key_missing"]:
        fail(
            f"{summary['key_missing']} kept secret(s) are sealed with a key not in OFFERS_PAYMENT_SECRET_KEYS"
            + (f" (offers {', '.join(missing[:5])})" if missing else ""),
            1,
        )
