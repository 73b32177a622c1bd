//! A second pipeline, not the retail example: two exports of one app's
//! users (one with other header names in another order, day-first dates,
//! yes/no flags, quoted commas in names, a gzip file) and a login audit with
//! bad timestamps and unknown users, written the way the README tells a
//! newcomer to write one (`tests/pipelines/app_users`). Its figures are
//! checked against a computation here that never looks at the lake. Then
//! the mistakes a newcomer makes every day, each of which must fail loudly
//! and commit nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::{lakehouse, repo, strings, text};

/// A small deterministic generator (64-bit LCG).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// One landed user row and what it means.
#[derive(Clone)]
struct User {
    file: String,
    line: i64,
    id: Option<i64>,
    signup: Option<NaiveDate>,
    /// The text landed in the date column.
    signup_text: String,
    active: Option<bool>,
    name: String,
    channel: &'static str,
}

struct Login {
    id: i64,
    user: Option<i64>,
    day: Option<NaiveDate>,
    device: String,
    success: Option<bool>,
}

/// What the generator landed.
struct Landed {
    users: Vec<User>,
    logins: Vec<Login>,
}

fn day(n: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + chrono::Duration::days(n as i64)
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Lands the two user exports and three login files under `lake`.
/// `web_users` and `app_users` set how many users each export has.
fn land(lake: &Path, web_users: i64, app_users: i64) -> Landed {
    let mut rng = Rng(42);
    let mut users = Vec::new();
    let write = |rel: &str, text: &str| {
        let p = lake.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if rel.ends_with(".gz") {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(text.as_bytes()).unwrap();
            std::fs::write(p, gz.finish().unwrap()).unwrap();
        } else {
            std::fs::write(p, text).unwrap();
        }
    };

    // Web export: ISO dates, true/false; a second file re-sends some users.
    for (file, ids) in [
        (
            "landing/users_web/web-1.csv",
            (1..=web_users).collect::<Vec<_>>(),
        ),
        (
            "landing/users_web/web-2.csv",
            (1..=web_users).step_by(9).collect(),
        ),
    ] {
        let mut text = String::from("user_id,email,full_name,signup_date,is_active\n");
        for (i, id) in ids.into_iter().enumerate() {
            let line = i as i64 + 2;
            let (id_text, id) = if rng.chance(80) {
                (format!("u{id}"), None)
            } else if rng.chance(5) {
                (format!(" {id} "), Some(id))
            } else {
                (id.to_string(), Some(id))
            };
            let d = day(rng.below(600));
            let (signup_text, signup) = match rng.below(40) {
                0 => ("2025-02-30".to_string(), None),
                1 => (d.format("%d/%m/%Y").to_string(), None),
                _ => (d.format("%Y-%m-%d").to_string(), Some(d)),
            };
            let (active_text, active) = match rng.below(30) {
                0 => ("maybe", None),
                1..=3 => (" FALSE", Some(false)),
                4..=9 => ("false", Some(false)),
                10..=12 => ("TRUE", Some(true)),
                _ => ("true", Some(true)),
            };
            let name = format!("Web User {}", id_text.trim());
            text.push_str(&format!(
                "{id_text},user{}@example.com,{},{signup_text},{active_text}\n",
                id.unwrap_or(0),
                csv_field(&name)
            ));
            users.push(User {
                file: file.into(),
                line,
                id,
                signup,
                signup_text,
                active,
                name,
                channel: "web",
            });
        }
        write(file, &text);
    }

    // App export: other header names in another order, day-first dates
    // (single-digit days too), yes/no flags, "Last, First" names; the
    // second file is gzip-compressed and re-sends some users.
    let first_app = web_users + 1;
    for (file, ids) in [
        (
            "landing/users_app/app-1.csv",
            (first_app..first_app + app_users).collect::<Vec<_>>(),
        ),
        (
            "landing/users_app/app-2.csv.gz",
            (first_app..first_app + app_users).step_by(7).collect(),
        ),
    ] {
        let mut text = String::from("Name,UserID,Joined,Mail,Active\n");
        for (i, id) in ids.into_iter().enumerate() {
            let line = i as i64 + 2;
            let d = day(rng.below(600));
            let (signup_text, signup) = match rng.below(25) {
                0 => ("31/02/2025".to_string(), None),
                1 => (d.format("00/%m/%Y").to_string(), None),
                2..=6 => (d.format("%-d/%-m/%Y").to_string(), Some(d)),
                _ => (d.format("%d/%m/%Y").to_string(), Some(d)),
            };
            let (active_text, active) = match rng.below(20) {
                0 => ("", None),
                1..=2 => ("N", Some(false)),
                3..=6 => ("no", Some(false)),
                7..=8 => ("Y", Some(true)),
                9 => ("Yes", Some(true)),
                _ => ("yes", Some(true)),
            };
            let name = format!("Appleton, Ann {id}");
            text.push_str(&format!(
                "{},{id},{signup_text},app{id}@example.com,{active_text}\n",
                csv_field(&name)
            ));
            users.push(User {
                file: file.into(),
                line,
                id: Some(id),
                signup,
                signup_text,
                active,
                name,
                channel: "app",
            });
        }
        write(file, &text);
    }

    // Logins: ISO or day-first timestamps, some impossible; users beyond
    // the exports; the third file re-sends a few attempts.
    let max_user = web_users + app_users + 40;
    let mut logins = Vec::new();
    let mut id = 0;
    for (f, d) in [(1u64, 420u64), (2, 421), (3, 422)] {
        let file = format!("landing/logins/logins-{f}.csv");
        let mut text = String::from("login_id,user_id,login_at,device,success\n");
        let mut rows = Vec::new();
        for _ in 0..500 {
            id += 1;
            let user = rng.below(max_user as u64) as i64 + 1;
            let on = day(d + rng.below(2));
            let (h, m, s) = (rng.below(24), rng.below(60), rng.below(60));
            let (at, day_of) = match rng.below(50) {
                0 => (format!("{} 25:00:00", on.format("%Y-%m-%d")), None),
                1..=5 => (format!("{} {h:02}:{m:02}", on.format("%d/%m/%Y")), Some(on)),
                _ => (
                    format!("{} {h:02}:{m:02}:{s:02}", on.format("%Y-%m-%d")),
                    Some(on),
                ),
            };
            let device = ["iOS", " android", "Web", "web "][rng.below(4) as usize];
            let (success_text, success) = match rng.below(60) {
                0 => ("yes", None),
                1..=20 => ("0", Some(false)),
                _ => ("1", Some(true)),
            };
            rows.push((id, user, at, device, success_text));
            logins.push(Login {
                id,
                user: Some(user),
                day: day_of,
                device: device.trim().to_lowercase(),
                success,
            });
        }
        if f == 3 {
            // Re-sent attempts of the first file: same id, same meaning.
            for k in 0..10 {
                let (row, login) = resent(&logins[100 + k * 37]);
                rows.push(row);
                logins.push(login);
            }
        }
        for (id, user, at, device, success) in &rows {
            text.push_str(&format!("{id},{user},{at},{device},{success}\n"));
        }
        write(&file, &text);
    }
    Landed { users, logins }
}

/// A login landed again: the same id and meaning, at noon.
#[allow(clippy::type_complexity)]
fn resent(l: &Login) -> ((i64, i64, String, &'static str, &'static str), Login) {
    let at = match l.day {
        Some(d) => format!("{} 12:00:00", d.format("%Y-%m-%d")),
        None => "2024-02-30 12:00:00".into(),
    };
    let device = match l.device.as_str() {
        "ios" => "iOS",
        "android" => "android",
        _ => "web",
    };
    let success = match l.success {
        Some(true) => "1",
        Some(false) => "0",
        None => "yes",
    };
    let again = Login {
        id: l.id,
        user: l.user,
        day: l.day,
        device: l.device.clone(),
        success: l.success,
    };
    ((l.id, l.user.unwrap_or(0), at, device, success), again)
}

/// What the pipeline must produce, computed from what was landed.
struct Expected {
    /// user id -> the winning row.
    users: BTreeMap<i64, User>,
    users_quarantined: BTreeMap<&'static str, u64>,
    users_duplicates: u64,
    logins_written: u64,
    logins_quarantined: BTreeMap<&'static str, u64>,
    logins_duplicates: u64,
    /// (day, device) -> (attempts, successful, users, active users)
    daily: BTreeMap<(NaiveDate, String), (i64, i64, i64, i64)>,
}

fn expected(landed: &Landed) -> Expected {
    let mut users: BTreeMap<i64, User> = BTreeMap::new();
    let mut users_quarantined = BTreeMap::new();
    let mut passing = 0u64;
    for u in &landed.users {
        let reason = if u.id.is_none() {
            Some("valid_user_id")
        } else if u.signup.is_none() {
            Some("valid_signup_date")
        } else if u.active.is_none() {
            Some("valid_active_flag")
        } else {
            None
        };
        if let Some(r) = reason {
            *users_quarantined.entry(r).or_insert(0) += 1;
            continue;
        }
        passing += 1;
        let id = u.id.unwrap();
        let later = users
            .get(&id)
            .is_none_or(|w| (&u.file, u.line) > (&w.file, w.line));
        if later {
            users.insert(id, u.clone());
        }
    }
    let users_duplicates = passing - users.len() as u64;

    let mut logins_quarantined = BTreeMap::new();
    let mut kept: BTreeMap<i64, &Login> = BTreeMap::new();
    let mut passing = 0u64;
    for l in &landed.logins {
        let known = l.user.is_some_and(|u| users.contains_key(&u));
        let reason = if l.day.is_none() {
            Some("valid_login_at")
        } else if !known {
            Some("known_user")
        } else if l.success.is_none() {
            Some("valid_success")
        } else {
            None
        };
        if let Some(r) = reason {
            *logins_quarantined.entry(r).or_insert(0) += 1;
            continue;
        }
        passing += 1;
        kept.insert(l.id, l);
    }
    let mut daily: BTreeMap<(NaiveDate, String), (i64, i64, BTreeSet<i64>, BTreeSet<i64>)> =
        BTreeMap::new();
    for l in kept.values() {
        let user = l.user.unwrap();
        let e = daily.entry((l.day.unwrap(), l.device.clone())).or_default();
        e.0 += 1;
        e.1 += i64::from(l.success == Some(true));
        e.2.insert(user);
        if users[&user].active == Some(true) {
            e.3.insert(user);
        }
    }
    Expected {
        users_quarantined,
        users_duplicates,
        logins_written: kept.len() as u64,
        logins_duplicates: passing - kept.len() as u64,
        logins_quarantined,
        daily: daily
            .into_iter()
            .map(|(k, (a, s, u, au))| (k, (a, s, u.len() as i64, au.len() as i64)))
            .collect(),
        users,
    }
}

/// A copy of the example pipeline in `root/sql`, each `(file, from, to)`
/// edit applied, and an empty lake in `root/lake`.
fn pipeline(root: &Path, edits: &[(&str, &str, &str)]) -> PathBuf {
    let from = repo().join("tests/pipelines/app_users");
    let to = root.join("sql");
    for layer in ["bronze", "silver", "gold"] {
        std::fs::create_dir_all(to.join(layer)).unwrap();
        for entry in std::fs::read_dir(from.join(layer)).unwrap() {
            let entry = entry.unwrap();
            let rel = format!("{layer}/{}", entry.file_name().to_string_lossy());
            let mut body = std::fs::read_to_string(entry.path()).unwrap();
            for (file, a, b) in edits {
                if *file == rel {
                    assert!(body.contains(a), "{rel} has no `{a}`");
                    body = body.replace(a, b);
                }
            }
            std::fs::write(to.join(&rel), body).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("lake")).unwrap();
    to
}

fn run(root: &Path) -> std::process::Output {
    lakehouse(&["run", "--lake", "lake", "--pipeline", "sql"], root)
}

/// Whether anything was committed to the table beyond its creation
/// (version 0 creates it empty, before a model's rows are staged).
fn committed(root: &Path, folder: &str) -> bool {
    let log = root.join("lake").join(folder).join("_delta_log");
    std::fs::read_dir(&log).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.ends_with(".json") && name != "00000000000000000000.json"
        })
    })
}

#[tokio::test]
async fn a_newcomers_pipeline_gives_exact_figures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    pipeline(root, &[]);
    let landed = land(&root.join("lake"), 300, 300);
    let want = expected(&landed);
    let out = run(root);
    let summary = text(&out);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    let lake = root.join("lake");

    // silver.users: every surviving user with the right values.
    let got = strings(
        &lake,
        "SELECT user_id, full_name, CAST(signup_date AS VARCHAR), CAST(is_active AS VARCHAR), channel FROM silver.users ORDER BY user_id",
    )
    .await;
    let want_users: Vec<Vec<String>> = want
        .users
        .iter()
        .map(|(id, u)| {
            vec![
                id.to_string(),
                u.name.clone(),
                u.signup.unwrap().to_string(),
                u.active.unwrap().to_string(),
                u.channel.to_string(),
            ]
        })
        .collect();
    assert_eq!(got.len(), want_users.len());
    assert_eq!(got, want_users);
    // Both channels and both date shapes survived (the data is not lucky).
    assert!(want
        .users
        .values()
        .any(|u| u.channel == "app" && u.signup_text.len() < 10));
    assert!(want.users.values().any(|u| u.file.ends_with(".gz")));

    let reasons = strings(
        &lake,
        "SELECT _reason, CAST(count(*) AS VARCHAR) FROM quarantine.silver_users GROUP BY 1 ORDER BY 1",
    )
    .await;
    let want_reasons: Vec<Vec<String>> = want
        .users_quarantined
        .iter()
        .map(|(r, n)| vec![r.to_string(), n.to_string()])
        .collect();
    assert_eq!(reasons, want_reasons);
    let users_line = crate::summary_line(&summary, "silver.users");
    let quarantined: u64 = want.users_quarantined.values().sum();
    let fields: Vec<&str> = users_line.split_whitespace().collect();
    let n = fields.len();
    assert_eq!(
        fields[n - 5..n - 1],
        [
            landed.users.len().to_string(),
            want.users.len().to_string(),
            quarantined.to_string(),
            want.users_duplicates.to_string()
        ],
        "{users_line}"
    );

    // silver.logins and its quarantine.
    let logins_line = crate::summary_line(&summary, "silver.logins");
    let quarantined: u64 = want.logins_quarantined.values().sum();
    let fields: Vec<&str> = logins_line.split_whitespace().collect();
    let n = fields.len();
    assert_eq!(
        fields[n - 5..n - 1],
        [
            landed.logins.len().to_string(),
            want.logins_written.to_string(),
            quarantined.to_string(),
            want.logins_duplicates.to_string()
        ],
        "{logins_line}"
    );
    assert!(want.logins_duplicates > 0 && want.logins_quarantined["known_user"] > 0);
    let reasons = strings(
        &lake,
        "SELECT _reason, CAST(count(*) AS VARCHAR) FROM quarantine.silver_logins GROUP BY 1 ORDER BY 1",
    )
    .await;
    let want_reasons: Vec<Vec<String>> = want
        .logins_quarantined
        .iter()
        .map(|(r, n)| vec![r.to_string(), n.to_string()])
        .collect();
    assert_eq!(reasons, want_reasons);

    // gold.daily_logins, figure by figure.
    let got = strings(
        &lake,
        "SELECT CAST(login_date AS VARCHAR), device, attempts, successful, users, active_users FROM gold.daily_logins ORDER BY 1, 2",
    )
    .await;
    let want_daily: Vec<Vec<String>> = want
        .daily
        .iter()
        .map(|((d, device), (a, s, u, au))| {
            vec![
                d.to_string(),
                device.clone(),
                a.to_string(),
                s.to_string(),
                u.to_string(),
                au.to_string(),
            ]
        })
        .collect();
    assert_eq!(got, want_daily);

    // A re-run changes nothing.
    let again = run(root);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("nothing new, no table changed"),
        "{}",
        text(&again)
    );
}

#[test]
fn a_date_that_does_not_parse_names_its_value_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    pipeline(
        root,
        &[(
            "silver/users.sql",
            "try_to_date(signup_date, '%d/%m/%Y')",
            "to_date(signup_date, '%d/%m/%Y')",
        )],
    );
    let landed = land(&root.join("lake"), 100, 100);
    let out = run(root);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    // "...the value '31/02/2025' of bronze.users_app.signup_date from
    // landing/users_app/app-1.csv line 17 does not convert (sql/silver/users.sql:20: ...)"
    let error = t
        .lines()
        .find(|l| l.starts_with("error: model silver.users: the value '"))
        .unwrap_or_else(|| panic!("{t}"));
    let value = error.split('\'').nth(1).unwrap();
    let after = error.split(" from ").nth(1).unwrap();
    let file = after.split(' ').next().unwrap();
    let line: i64 = after
        .split(" line ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The row named holds the value, and the value is one a day-first
    // parse refuses.
    let row = landed
        .users
        .iter()
        .find(|u| u.file == file && u.line == line)
        .unwrap_or_else(|| panic!("no landed row {file}:{line}: {error}"));
    assert_eq!(row.signup_text, value, "{error}");
    assert!(row.signup.is_none() && row.channel == "app", "{error}");
    assert!(error.contains("of bronze.users_app.signup_date"), "{error}");
    assert!(
        error.contains("users.sql:19: `to_date(signup_date, '%d/%m/%Y')  "),
        "{error}"
    );
    assert!(error.contains("try_to_date"), "{error}");
    assert!(!committed(root, "silver/users"), "{t}");
    assert!(
        crate::summary_line(&t, "silver.logins").contains("not run"),
        "{t}"
    );
}

#[tokio::test]
async fn a_misspelt_rename_refuses_the_file_unless_columns_are_lenient() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    pipeline(
        root,
        &[("bronze/users_app.toml", "Joined = ", "JoinedOn = ")],
    );
    land(&root.join("lake"), 100, 100);
    let out = run(root);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for file in ["app-1.csv", "app-2.csv.gz"] {
        let refusal = t
            .lines()
            .find(|l| l.contains(&format!("file landing/users_app/{file} refused")))
            .unwrap_or_else(|| panic!("{file} not refused:\n{t}"));
        assert!(
            refusal
                .contains("its header has no column `JoinedOn` (rename JoinedOn = \"signup_date\""),
            "{refusal}"
        );
        assert!(
            refusal.contains("Headers found: full_name, user_id, joined, email, is_active."),
            "{refusal}"
        );
        assert!(
            refusal.contains("The nearest header is `joined`."),
            "{refusal}"
        );
    }
    let lake = root.join("lake");
    assert_eq!(
        crate::one(&lake, "SELECT count(*) FROM bronze.users_app").await,
        0
    );

    // Opting into lenient columns takes the files, with a warning.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    pipeline(
        root,
        &[("bronze/users_app.toml", "Joined = ", "JoinedOn = ")],
    );
    let settings = root.join("sql/bronze/users_app.toml");
    let body = std::fs::read_to_string(&settings).unwrap();
    std::fs::write(
        &settings,
        body.replace("[rename]", "lenient_columns = true\n\n[rename]"),
    )
    .unwrap();
    land(&root.join("lake"), 100, 100);
    let out = run(root);
    let t = text(&out);
    assert!(
        t.contains("warning: bronze.users_app: landing/users_app/app-1.csv lacks column(s) signup_date (NULL for its 100 rows)"),
        "{t}"
    );
    assert!(!t.contains("refused"), "{t}");
}

#[test]
fn a_wrong_date_format_fails_the_model_instead_of_quarantining_a_source() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The web line copied for the app export: no day-first date parses.
    pipeline(
        root,
        &[(
            "silver/users.sql",
            "try_to_date(signup_date, '%d/%m/%Y')",
            "try_to_date(signup_date, '%Y-%m-%d')",
        )],
    );
    let landed = land(&root.join("lake"), 100, 200);
    let want = expected(&landed);
    let out = run(root);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    // Every app row but the few ISO-dated ones fails the date rule; the
    // others fail as the reference says.
    let app_bad = landed
        .users
        .iter()
        .filter(|u| u.channel == "app" && u.id.is_some())
        .filter(|u| !(u.signup_text.len() == 10 && u.signup_text.as_bytes()[4] == b'-'))
        .count() as u64;
    let web_date = landed
        .users
        .iter()
        .filter(|u| u.channel == "web" && u.id.is_some() && u.signup.is_none())
        .count() as u64;
    let total = landed.users.len();
    let error = t
        .lines()
        .find(|l| l.starts_with("error: model silver.users: "))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(
        error.contains(&format!(
            "would be quarantined, above the limit of 50% (max_quarantine_pct): `valid_signup_date` (signup_date IS NOT NULL) {} rows",
            app_bad + web_date
        )),
        "{error}"
    );
    assert!(error.contains(&format!("of {total} rows")), "{error}");
    if let Some(n) = want.users_quarantined.get("valid_user_id") {
        assert!(
            error.contains(&format!("`valid_user_id` (user_id IS NOT NULL) {n} rows")),
            "{error}"
        );
    }
    assert!(!committed(root, "silver/users"), "{t}");
    assert!(!committed(root, "quarantine/silver_users"), "{t}");
}

#[test]
fn an_expectation_over_a_column_the_model_does_not_return_stops_the_run_before_ingesting() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    pipeline(
        root,
        &[(
            "silver/logins.toml",
            "check = \"login_at IS NOT NULL\"",
            "check = \"login_ts IS NOT NULL\"",
        )],
    );
    land(&root.join("lake"), 20, 20);
    let out = run(root);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("silver/logins.toml:5: expectation `valid_login_at` (`login_ts IS NOT NULL`) uses column `login_ts`, which the model's SELECT does not return (it returns login_id, user_id, login_at, login_date, device, success, _known_user, _login_at_text, _source_file, _source_line). Did you mean `login_id` or `login_at`?"),
        "{t}"
    );
    assert!(!t.contains("model silver.logins: model"), "{t}");
    assert!(!t.contains("l.login"), "{t}");
    // Nothing was taken.
    assert!(!committed(root, "bronze/logins"), "{t}");
    assert!(!committed(root, "bronze/users_web"), "{t}");
}
