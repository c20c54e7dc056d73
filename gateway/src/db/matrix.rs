//! Matrix rows: one per reporting cluster, holding its whole row.

use atoll_api::gateway::RowCell;
use atoll_api::ids::Term;
use sqlx::Row;

use super::Db;
use super::DbError;
use super::json_column;
use super::with_pool;

/// A reporter's stored row.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRow {
    pub reporter: String,
    pub term: Term,
    pub cells: Vec<RowCell>,
    pub reported_ms: i64,
}

impl Db {
    /// Store the latest rows, fenced by term (a row from an older term never replaces a newer
    /// one). One transaction for the batch.
    pub async fn put_rows(&self, rows: &[std::sync::Arc<StoredRow>]) -> Result<(), DbError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(rows.len());
        for row in rows {
            let cells = serde_json::to_string(&row.cells).map_err(|e| DbError::corrupt("matrix_rows.cells", e))?;
            let term = i64::try_from(row.term.0).map_err(|e| DbError::corrupt("matrix_rows.term", e))?;
            encoded.push((&row.reporter, term, cells, row.reported_ms));
        }
        with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            for (reporter, term, cells, reported_ms) in &encoded {
                sqlx::query(
                    "INSERT INTO matrix_rows (reporter, term, cells, reported_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (reporter) DO UPDATE SET term = excluded.term, cells = excluded.cells, reported_ms = excluded.reported_ms
                     WHERE matrix_rows.term <= excluded.term",
                )
                .bind(*reporter)
                .bind(*term)
                .bind(cells)
                .bind(*reported_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, DbError>(())
        })
    }

    pub async fn rows(&self) -> Result<Vec<StoredRow>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query("SELECT reporter, term, cells, reported_ms FROM matrix_rows ORDER BY reporter")
                .fetch_all(pool)
                .await?;
            rows.iter().map(stored_row).collect()
        })
    }

    /// One reporter's row.
    pub async fn row(&self, reporter: &str) -> Result<Option<StoredRow>, DbError> {
        with_pool!(self, read, |pool| {
            let row = sqlx::query("SELECT reporter, term, cells, reported_ms FROM matrix_rows WHERE reporter = $1")
                .bind(reporter)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(stored_row).transpose()
        })
    }

    /// `(reporter, term, reported_ms)` of every row, without the cells.
    pub async fn row_versions(&self) -> Result<Vec<(String, u64, i64)>, DbError> {
        with_pool!(self, read, |pool| {
            let rows = sqlx::query("SELECT reporter, term, reported_ms FROM matrix_rows").fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let term: i64 = row.try_get("term")?;
                    Ok::<_, DbError>((
                        row.try_get("reporter")?,
                        u64::try_from(term).map_err(|e| DbError::corrupt("matrix_rows.term", e))?,
                        row.try_get("reported_ms")?,
                    ))
                })
                .collect()
        })
    }
}

fn stored_row<R: Row>(row: &R) -> Result<StoredRow, DbError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let cells: String = row.try_get("cells")?;
    let term: i64 = row.try_get("term")?;
    Ok(StoredRow {
        reporter: row.try_get("reporter")?,
        term: Term(u64::try_from(term).map_err(|e| DbError::corrupt("matrix_rows.term", e))?),
        cells: json_column("matrix_rows.cells", &cells)?,
        reported_ms: row.try_get("reported_ms")?,
    })
}
