//! Numbered schema migrations, applied in order and recorded in `user_version`. Never edit a
//! released migration: add the next one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: instances. `spec` is the validated configuration as JSON (image, command, env,
    // resources, ...); the columns are what lookups and lists filter on.
    "CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        handle TEXT UNIQUE,
        created_at TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        reason TEXT,
        exit_code INTEGER,
        stopped_at TEXT,
        last_active_at TEXT
    );",
    // 2: secrets, encrypted by the `secrets` module (AES-256-GCM, the name as associated data).
    // Only nonces and ciphertexts are stored, never a value in clear.
    "CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );",
    // 3: the E2B-compatible front end. Keys are stored as their SHA-256 (a key is 32 random
    // bytes, so a fast hash is enough: there is nothing to guess). A sandbox is an instance
    // with the E2B side of it: its template name, metadata, the token its in-sandbox calls
    // carry; it goes with its instance.
    "CREATE TABLE e2b_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    CREATE TABLE e2b_sandboxes (
        instance_id TEXT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
        template TEXT NOT NULL,
        metadata TEXT NOT NULL,
        access_token TEXT NOT NULL,
        key_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    );",
];

/// Brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
