"""Indexes for conversation search (selectors.conversation_search) on PostgreSQL.

The search reads messages in one of two ways, and each gets the index its
WHERE clause can use (the expressions are exactly the ones Django writes):

- spaced scripts: full-text search,
  `to_tsvector('simple'::regconfig, COALESCE(content, '')) @@ websearch_to_tsquery(...)`
  → a GIN index on that tsvector expression;
- Japanese, Chinese, Korean, Thai (and SQLite): `icontains`,
  `UPPER(content::text) LIKE UPPER('%word%')` → a GIN trigram index
  (pg_trgm's gin_trgm_ops) on UPPER(content). Words shorter than three
  characters give no trigram and are still read row by row.

Nothing on SQLite (no such indexes; its search scans). Built CONCURRENTLY,
outside a transaction, so a live site keeps writing messages meanwhile.
pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may
create it; otherwise have a superuser run `CREATE EXTENSION pg_trgm` first.
"""

from django.db import migrations

FULL_TEXT = "generation_message_content_fts"
TRIGRAM = "generation_message_content_trgm"

CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {FULL_TEXT} ON generation_message "
    "USING gin (to_tsvector('simple'::regconfig, COALESCE(content, '')))",
    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {TRIGRAM} ON generation_message "
    "USING gin (UPPER(content) gin_trgm_ops)",
]
DROP = [f"DROP INDEX CONCURRENTLY IF EXISTS {FULL_TEXT}", f"DROP INDEX CONCURRENTLY IF EXISTS {TRIGRAM}"]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("generation", "0006_conversation_deleted_at"),
    ]

    operations = [
        migrations.RunPython(_run(CREATE), _run(DROP), elidable=False),
    ]
