//! `fepd demo`: a self-contained run on generated data.
//!
//! It creates, under one directory, a "legacy" SQLite database with an individual-subsidy
//! payment table (timestamp mode) and a village ledger without any timestamp (snapshot
//! mode), plants a few hundred bad rows of several kinds among the good ones, writes an
//! agent config registering both, runs one pass into a dir sink, verifies the outbox and
//! prints a summary. Running it again delivers nothing new; `--mutate` changes and deletes
//! a few rows first, so the next pass delivers exactly those changes.

use std::path::{Path, PathBuf};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row as _, SqlitePool};

/// The kinds of planted bad rows, with the rule each must be rejected by.
pub const PLANTED_KINDS: [(&str, &str, &str); 6] = [
    ("wrong ID check character", "id_number", "idcard.check_char"),
    ("amount with 3 decimals", "amount", "amount.scale"),
    ("negative amount", "amount", "amount.negative"),
    (
        "village outside the agent's region",
        "region_code",
        "region.outside_agent",
    ),
    ("empty name", "recipient_name", "required.missing"),
    (
        "GBK bytes in a UTF-8 text column",
        "recipient_name",
        "text.encoding",
    ),
];

/// How many bad rows of each kind are planted.
pub const BAD_PER_KIND: usize = 50;

/// The agent's region in the demo.
pub const DEMO_REGION: &str = "430124";

/// A planted bad row: its key, the field and the rule that must reject it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Planted {
    pub source_key: String,
    pub field: &'static str,
    pub rule: &'static str,
}

/// What the generator made.
#[derive(Debug, Clone)]
pub struct Generated {
    pub subsidy_rows: usize,
    pub ledger_rows: usize,
    pub planted: Vec<Planted>,
}

/// Deterministic pseudo-random numbers (SplitMix64), so the demo is the same every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "周", "吴", "徐", "孙", "胡", "朱", "高", "林",
    "何", "郭", "马", "罗",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟",
    "涛", "明", "超", "秀兰", "霞", "平", "刚", "桂英", "建华", "玉兰",
];

/// ID check character (GB 11643-1999), computed independently of the validator.
fn id_check_char(first17: &str) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17
        .chars()
        .zip(W)
        .map(|(c, w)| c.to_digit(10).unwrap_or(0) * w)
        .sum();
    b"10X98765432"[(sum % 11) as usize] as char
}

fn village(rng: &mut Rng) -> String {
    format!(
        "{DEMO_REGION}{:03}{:03}",
        100 + rng.below(12),
        200 + rng.below(30)
    )
}

fn date_between(rng: &mut Rng, from: chrono::NaiveDate, days: u64) -> chrono::NaiveDate {
    from + chrono::Days::new(rng.below(days))
}

async fn open_rw(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
}

/// Creates the legacy database with `rows` subsidy payments (a few hundred of them bad) and
/// a 5,000-entry village ledger.
pub async fn generate(db: &Path, rows: usize) -> Result<Generated, sqlx::Error> {
    let pool = open_rw(db).await?;
    sqlx::raw_sql(
        "CREATE TABLE subsidy_payment (
            pay_id INTEGER PRIMARY KEY, project_code TEXT NOT NULL, name TEXT, id_card TEXT,
            village_code TEXT, bank_account TEXT, amount TEXT, pay_date TEXT, period TEXT,
            updated_at TEXT NOT NULL);
         CREATE INDEX subsidy_payment_updated ON subsidy_payment (updated_at, pay_id);
         CREATE TABLE village_ledger (
            entry_no TEXT PRIMARY KEY, village TEXT, year INTEGER, voucher TEXT, entry_date TEXT,
            direction TEXT, subject TEXT, summary TEXT, amount NUMERIC, counterparty TEXT);",
    )
    .execute(&pool)
    .await?;

    let mut rng = Rng(20261204);
    let start = chrono::NaiveDate::from_ymd_opt(2017, 1, 1).unwrap_or_default();
    // Bad rows are spread through the table: every `stride`-th row, cycling the kinds.
    let bad_total = (BAD_PER_KIND * PLANTED_KINDS.len()).min(rows / 10);
    let stride = rows.checked_div(bad_total).unwrap_or(usize::MAX);
    let mut planted = Vec::new();
    let mut gbk_rows: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut chunk: Vec<serde_json::Value> = Vec::with_capacity(10_000);
    // Timestamps ascend with pay_id (a payment table is mostly appended), several rows per
    // second, so many rows share a timestamp.
    let mut ts = start.and_hms_opt(8, 0, 0).unwrap_or_default();
    for i in 0..rows {
        let pay_id = (i + 1) as i64;
        let name = format!("{}{}", rng.pick(SURNAMES), rng.pick(GIVEN));
        let birth = date_between(
            &mut rng,
            chrono::NaiveDate::from_ymd_opt(1940, 1, 1).unwrap_or_default(),
            365 * 60,
        );
        let first17 = format!(
            "{DEMO_REGION}{}{:03}",
            birth.format("%Y%m%d"),
            rng.below(1000)
        );
        let mut id_card = format!("{first17}{}", id_check_char(&first17));
        let mut village_code = village(&mut rng);
        let mut amount = format!("{}.{:02}", 50 + rng.below(1950), rng.below(100));
        let pay_date = date_between(&mut rng, start, 365 * 9);
        let mut name_value = serde_json::Value::String(name.clone());
        ts += chrono::Duration::seconds(rng.below(3) as i64);
        let kind = if bad_total > 0 && i % stride == stride / 2 && planted.len() < bad_total {
            Some(planted.len() % PLANTED_KINDS.len())
        } else {
            None
        };
        if let Some(k) = kind {
            match k {
                0 => {
                    let good = id_card.pop().unwrap_or('0');
                    let wrong = if good == '7' { '8' } else { '7' };
                    id_card.push(wrong);
                }
                // the third decimal is never 0, so the value really has 3 decimal places
                1 => {
                    amount = format!(
                        "{}.{:02}{}",
                        50 + rng.below(100),
                        rng.below(100),
                        1 + rng.below(9)
                    )
                }
                2 => amount = format!("-{amount}"),
                3 => village_code = format!("430225{}", &village_code[6..]),
                4 => name_value = serde_json::Value::String("  ".into()),
                _ => {
                    // A name whose GBK bytes happen to be valid UTF-8 would not be a bad row.
                    let mut gbk_name = name.clone();
                    let mut bytes = encoding_rs::GBK.encode(&gbk_name).0.into_owned();
                    while std::str::from_utf8(&bytes).is_ok() {
                        gbk_name = format!("{}{}", rng.pick(SURNAMES), rng.pick(GIVEN));
                        bytes = encoding_rs::GBK.encode(&gbk_name).0.into_owned();
                    }
                    gbk_rows.push((pay_id, bytes));
                }
            }
            let (_, field, rule) = PLANTED_KINDS[k];
            planted.push(Planted {
                source_key: pay_id.to_string(),
                field,
                rule,
            });
        }
        chunk.push(serde_json::json!([
            pay_id,
            format!("XM{}-{:02}", pay_date.format("%Y"), 1 + rng.below(8)),
            name_value,
            id_card,
            village_code,
            format!("6217{:015}", rng.below(1_000_000_000_000_000)),
            amount,
            pay_date.to_string(),
            pay_date.format("%Y-%m").to_string(),
            ts.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]));
        if chunk.len() == 10_000 {
            insert_subsidy(&pool, &chunk).await?;
            chunk.clear();
        }
    }
    insert_subsidy(&pool, &chunk).await?;
    for (pay_id, bytes) in gbk_rows {
        sqlx::query("UPDATE subsidy_payment SET name = ?1 WHERE pay_id = ?2")
            .bind(bytes)
            .bind(pay_id)
            .execute(&pool)
            .await?;
    }

    let ledger_rows = 5_000;
    let subjects = ["101", "102", "113", "501", "502", "541"];
    let summaries_in = ["上级转移支付资金", "村集体资产出租收入", "专项扶持资金拨入"];
    let summaries_out = [
        "村道硬化工程款",
        "村干部误工补贴",
        "饮水工程材料费",
        "办公费用",
    ];
    let mut ledger = Vec::with_capacity(ledger_rows);
    for i in 0..ledger_rows {
        let year = 2018 + rng.below(8) as i32;
        let d = date_between(
            &mut rng,
            chrono::NaiveDate::from_ymd_opt(year, 1, 1).unwrap_or_default(),
            360,
        );
        let income = rng.below(3) == 0;
        ledger.push(serde_json::json!([
            format!("JZ{year}-{:06}", i + 1),
            village(&mut rng),
            year,
            format!("记-{:03}", 1 + rng.below(400)),
            d.to_string(),
            if income { "收入" } else { "支出" },
            if income {
                subjects[rng.below(3) as usize]
            } else {
                subjects[3 + rng.below(3) as usize]
            },
            if income {
                rng.pick(&summaries_in)
            } else {
                rng.pick(&summaries_out)
            },
            // Stored with NUMERIC affinity: becomes REAL, read back exactly via its shortest text.
            format!("{}.{}", 100 + rng.below(50_000), rng.below(100)),
            if rng.below(4) == 0 {
                serde_json::Value::Null
            } else {
                serde_json::Value::String(format!("{}建材店", rng.pick(SURNAMES)))
            },
        ]));
    }
    sqlx::query(
        "INSERT INTO village_ledger SELECT json_extract(value,'$[0]'), json_extract(value,'$[1]'), json_extract(value,'$[2]'), \
         json_extract(value,'$[3]'), json_extract(value,'$[4]'), json_extract(value,'$[5]'), json_extract(value,'$[6]'), \
         json_extract(value,'$[7]'), json_extract(value,'$[8]'), json_extract(value,'$[9]') FROM json_each(?1)",
    )
    .bind(serde_json::Value::Array(ledger).to_string())
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(Generated {
        subsidy_rows: rows,
        ledger_rows,
        planted,
    })
}

async fn insert_subsidy(pool: &SqlitePool, rows: &[serde_json::Value]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO subsidy_payment SELECT json_extract(value,'$[0]'), json_extract(value,'$[1]'), json_extract(value,'$[2]'), \
         json_extract(value,'$[3]'), json_extract(value,'$[4]'), json_extract(value,'$[5]'), json_extract(value,'$[6]'), \
         json_extract(value,'$[7]'), json_extract(value,'$[8]'), json_extract(value,'$[9]') FROM json_each(?1)",
    )
    .bind(serde_json::Value::Array(rows.to_vec()).to_string())
    .execute(pool)
    .await?;
    Ok(())
}

/// What [`mutate`] changed, so a test can check the next pass delivers exactly that.
#[derive(Debug, Clone, Default)]
pub struct Mutation {
    /// Subsidy keys updated (timestamp mode: upserts).
    pub subsidy_updated: Vec<String>,
    /// Ledger keys updated (snapshot mode: upserts).
    pub ledger_updated: Vec<String>,
    /// Ledger keys deleted (snapshot mode: deletes).
    pub ledger_deleted: Vec<String>,
}

/// Changes a few good rows and deletes a few ledger entries.
pub async fn mutate(db: &Path, round: u32) -> Result<Mutation, sqlx::Error> {
    let pool = open_rw(db).await?;
    let mut m = Mutation::default();
    let now = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .naive_local();
    // Rows whose amount is a plain valid amount and whose key is not planted bad.
    let ids: Vec<i64> = sqlx::query(
        "SELECT pay_id FROM subsidy_payment WHERE amount NOT LIKE '-%' AND length(amount) - instr(amount, '.') = 2 \
         AND typeof(name) = 'text' AND trim(name) <> '' AND village_code LIKE '430124%' ORDER BY pay_id LIMIT 3 OFFSET ?1",
    )
    .bind(i64::from(round) * 7 + 11)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    for id in &ids {
        sqlx::query(
            "UPDATE subsidy_payment SET amount = '9999.00', updated_at = ?1 WHERE pay_id = ?2",
        )
        .bind(now.format("%Y-%m-%d %H:%M:%S").to_string())
        .bind(id)
        .execute(&pool)
        .await?;
        m.subsidy_updated.push(id.to_string());
    }
    let entries: Vec<String> =
        sqlx::query("SELECT entry_no FROM village_ledger ORDER BY entry_no LIMIT 4 OFFSET ?1")
            .bind(i64::from(round) * 5 + 3)
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    for (i, e) in entries.iter().enumerate() {
        if i < 2 {
            sqlx::query(
                "UPDATE village_ledger SET summary = summary || '（更正）' WHERE entry_no = ?1",
            )
            .bind(e)
            .execute(&pool)
            .await?;
            m.ledger_updated.push(e.clone());
        } else {
            sqlx::query("DELETE FROM village_ledger WHERE entry_no = ?1")
                .bind(e)
                .execute(&pool)
                .await?;
            m.ledger_deleted.push(e.clone());
        }
    }
    pool.close().await;
    Ok(m)
}

/// Writes the demo's agent config and connector files (never overwriting edits).
pub fn write_config(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("connectors.d"))?;
    let write_new = |path: PathBuf, text: &str| -> std::io::Result<()> {
        if !path.exists() {
            std::fs::write(path, text)?;
        }
        Ok(())
    };
    let config = dir.join("fepd.toml");
    write_new(config.clone(), DEMO_AGENT)?;
    write_new(dir.join("connectors.d/subsidy.toml"), DEMO_SUBSIDY)?;
    write_new(dir.join("connectors.d/ledger.toml"), DEMO_LEDGER)?;
    Ok(config)
}

pub const DEMO_AGENT: &str = r#"# fepd demo agent — generated by `fepd demo`
agent_id = "demo-430124"
region_code = "430124"
state_dir = "state"
signing_key = "signing.key"
time_zone = "Asia/Shanghai"

[sink]
type = "dir"
path = "outbox"

[spool]
batch_size = 1000
"#;

pub const DEMO_SUBSIDY: &str = r#"# 一卡通 subsidy payments, from the demo's legacy SQLite database.
name = "subsidy"
record_type = "individual_subsidy"
description = "demo: subsidy one-card payments"

[source]
driver = "sqlite"
path = "../legacy.db"

[extract]
table = "subsidy_payment"
key = "pay_id"
mode = "timestamp"
column = "updated_at"
lag = "5m"

[fields]
payment_code = "pay_id"
project_code = "project_code"
recipient_name = { column = "name", transforms = ["trim"] }
id_number = { column = "id_card", transforms = ["trim", "upper"] }
region_code = "village_code"
bank_account = "bank_account"
amount = "amount"
paid_date = "pay_date"
period = "period"
"#;

pub const DEMO_LEDGER: &str = r#"# Village ledger (村级财务), a legacy table without any timestamp: snapshot mode.
name = "ledger"
record_type = "village_finance"
description = "demo: township-agency village accounting ledger"

[source]
driver = "sqlite"
path = "../legacy.db"

[extract]
table = "village_ledger"
key = "entry_no"
mode = "snapshot"

[fields]
entry_code = "entry_no"
village_code = "village"
fiscal_year = "year"
voucher_no = "voucher"
entry_date = "entry_date"
direction = "direction"
subject_code = { column = "subject", code_table = "subjects" }
summary = "summary"
amount = "amount"
counterparty = "counterparty"

# local account codes of the village system → platform subject codes
[code_tables.subjects]
"101" = "1001"
"102" = "1002"
"113" = "1131"
"501" = "5001"
"502" = "5002"
"541" = "5401"
"#;
