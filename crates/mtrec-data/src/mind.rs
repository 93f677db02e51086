//! Parsers (and, for the synthetic generator, formatters) for the MIND text formats.
//!
//! Each split folder of MIND holds (no header lines, tab-separated, UTF-8):
//! - `news.tsv`, 8 columns: news id, category, subcategory, title, abstract, url, title entities,
//!   abstract entities. The entity columns are JSON lists of objects with the keys `Label`, `Type`,
//!   `WikidataId`, `Confidence`, `OccurrenceOffsets` and `SurfaceForms`; the offsets count
//!   characters (Unicode code points) of the title (or abstract), and `SurfaceForms[i]` is the text
//!   found at `OccurrenceOffsets[i]`.
//! - `behaviors.tsv`, 5 columns: impression id, user id, time (`11/13/2019 8:36:57 AM`, UTC),
//!   history (space-separated news ids, oldest first, possibly empty) and impressions
//!   (`N123-1 N456-0`, or `N123 N456` where the labels are withheld, as in MIND-large test).
//! - `entity_embedding.vec` / `relation_embedding.vec`: a Wikidata id, then the vector's floats,
//!   separated by tabs (a trailing tab is tolerated).
//!
//! The functions here check one line each and return [`DataError::Parse`] naming the file, the
//! 1-based line, the field and the reason; they never panic on input.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// One entity of a `title_entities` / `abstract_entities` JSON list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MindEntity {
    /// Wikidata label, e.g. `"Prince Philip, Duke of Edinburgh"`.
    pub label: String,
    /// Entity type code (`P` person, `G` geo-political, `O` organization, `C` concept, ...).
    #[serde(rename = "Type")]
    pub kind: String,
    /// Wikidata id, the key of `entity_embedding.vec`.
    pub wikidata_id: String,
    /// Linker confidence.
    pub confidence: f64,
    /// Code-point offsets of each occurrence in the text.
    pub occurrence_offsets: Vec<u64>,
    /// The text at each offset (same length as `occurrence_offsets`).
    pub surface_forms: Vec<String>,
}

/// One row of `news.tsv` (the columns prep needs; abstract and url are checked, then dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct NewsLine<'a> {
    /// News id, e.g. `N55528`.
    pub news_id: &'a str,
    /// Category, e.g. `lifestyle`.
    pub category: &'a str,
    /// Subcategory, e.g. `lifestyleroyals`.
    pub subcategory: &'a str,
    /// Title text.
    pub title: &'a str,
    /// Parsed `title_entities`.
    pub title_entities: Vec<MindEntity>,
    /// Every column but the id, for telling whether two splits define a news id alike.
    pub content: &'a str,
}

/// One row of `behaviors.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct BehaviorLine<'a> {
    /// Impression id.
    pub impression_id: i64,
    /// User id, e.g. `U13740`.
    pub user: &'a str,
    /// Unix seconds, UTC.
    pub time: i64,
    /// Clicked news ids, oldest first.
    pub history: Vec<&'a str>,
    /// Candidate news ids in their original order, with the label when the file has one.
    pub impressions: Vec<(&'a str, Option<i8>)>,
}

fn strip_eol(line: &str) -> &str {
    line.strip_suffix('\n').unwrap_or(line).trim_end_matches('\r')
}

fn check_id(path: &Path, line: u64, field: &str, id: &str) -> Result<(), DataError> {
    if id.is_empty() {
        return Err(DataError::parse(path, line, field, "empty"));
    }
    if id.chars().any(char::is_whitespace) {
        return Err(DataError::parse(path, line, field, format!("`{id}` contains whitespace")));
    }
    Ok(())
}

/// Parses one line of `news.tsv` (exactly 8 tab-separated columns).
pub fn parse_news_line<'a>(path: &Path, line_no: u64, line: &'a str) -> Result<NewsLine<'a>, DataError> {
    let line = strip_eol(line);
    let cols: Vec<&str> = line.split('\t').collect();
    if cols.len() != 8 {
        return Err(DataError::parse(
            path,
            line_no,
            "columns",
            format!("expected 8 tab-separated columns, found {}", cols.len()),
        ));
    }
    check_id(path, line_no, "news id", cols[0])?;
    if cols[1].is_empty() {
        return Err(DataError::parse(path, line_no, "category", "empty"));
    }
    let title_entities = parse_entities(path, line_no, "title_entities", cols[6])?;
    if !cols[7].is_empty() {
        serde_json::from_str::<Vec<MindEntity>>(cols[7])
            .map_err(|e| DataError::parse(path, line_no, "abstract_entities", format!("bad JSON: {e}")))?;
    }
    let content = &line[cols[0].len() + 1..];
    Ok(NewsLine {
        news_id: cols[0],
        category: cols[1],
        subcategory: cols[2],
        title: cols[3],
        title_entities,
        content,
    })
}

fn parse_entities(path: &Path, line_no: u64, field: &str, text: &str) -> Result<Vec<MindEntity>, DataError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let entities: Vec<MindEntity> = serde_json::from_str(text)
        .map_err(|e| DataError::parse(path, line_no, field, format!("bad JSON: {e}")))?;
    for e in &entities {
        if e.occurrence_offsets.len() != e.surface_forms.len() {
            return Err(DataError::parse(
                path,
                line_no,
                field,
                format!(
                    "entity {}: {} OccurrenceOffsets but {} SurfaceForms",
                    e.wikidata_id,
                    e.occurrence_offsets.len(),
                    e.surface_forms.len()
                ),
            ));
        }
    }
    Ok(entities)
}

/// Parses one line of `behaviors.tsv` (exactly 5 tab-separated columns).
pub fn parse_behavior_line<'a>(
    path: &Path,
    line_no: u64,
    line: &'a str,
) -> Result<BehaviorLine<'a>, DataError> {
    let line = strip_eol(line);
    let cols: Vec<&str> = line.split('\t').collect();
    if cols.len() != 5 {
        return Err(DataError::parse(
            path,
            line_no,
            "columns",
            format!("expected 5 tab-separated columns, found {}", cols.len()),
        ));
    }
    let impression_id: i64 = cols[0].parse().map_err(|_| {
        DataError::parse(path, line_no, "impression id", format!("`{}` is not an integer", cols[0]))
    })?;
    check_id(path, line_no, "user id", cols[1])?;
    let time = parse_time(cols[2])
        .map_err(|reason| DataError::parse(path, line_no, "time", format!("`{}`: {reason}", cols[2])))?;
    let history: Vec<&str> = cols[3].split(' ').filter(|s| !s.is_empty()).collect();
    let mut impressions = Vec::new();
    let mut labeled = None;
    for item in cols[4].split(' ').filter(|s| !s.is_empty()) {
        let (id, label) = match item.rsplit_once('-') {
            Some((id, "1")) => (id, Some(1)),
            Some((id, "0")) => (id, Some(0)),
            Some(_) => {
                return Err(DataError::parse(
                    path,
                    line_no,
                    "impressions",
                    format!("bad label in `{item}`: expected `-0` or `-1`"),
                ));
            }
            None => (item, None),
        };
        check_id(path, line_no, "impressions", id)?;
        match labeled {
            None => labeled = Some(label.is_some()),
            Some(l) if l != label.is_some() => {
                return Err(DataError::parse(
                    path,
                    line_no,
                    "impressions",
                    format!("`{item}`: labeled and unlabeled candidates mixed in one impression"),
                ));
            }
            Some(_) => {}
        }
        impressions.push((id, label));
    }
    if impressions.is_empty() {
        return Err(DataError::parse(path, line_no, "impressions", "no candidates"));
    }
    Ok(BehaviorLine { impression_id, user: cols[1], time, history, impressions })
}

/// Parses one line of an `*_embedding.vec` file: the id and its floats.
pub fn parse_vec_line<'a>(
    path: &Path,
    line_no: u64,
    line: &'a str,
) -> Result<(&'a str, Vec<f32>), DataError> {
    let mut fields = strip_eol(line).split('\t').filter(|s| !s.is_empty());
    let id = fields.next().ok_or_else(|| DataError::parse(path, line_no, "id", "empty line"))?;
    let vector = fields
        .enumerate()
        .map(|(i, f)| {
            f.trim().parse::<f32>().map_err(|_| {
                DataError::parse(path, line_no, format!("value {}", i + 1), format!("`{f}` is not a number"))
            })
        })
        .collect::<Result<Vec<f32>, _>>()?;
    if vector.is_empty() {
        return Err(DataError::parse(path, line_no, "vector", format!("`{id}` has no values")));
    }
    Ok((id, vector))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses MIND's `M/D/YYYY h:mm:ss AM|PM` (UTC) into unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let (date, rest) = text.split_once(' ').ok_or("expected `M/D/YYYY h:mm:ss AM`")?;
    let (clock, ampm) = rest.split_once(' ').ok_or("expected `M/D/YYYY h:mm:ss AM`")?;
    let num = |s: &str, what: &str| -> Result<i64, String> {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad {what} `{s}`"));
        }
        s.parse::<i64>().map_err(|_| format!("bad {what} `{s}`"))
    };
    let d: Vec<&str> = date.split('/').collect();
    let c: Vec<&str> = clock.split(':').collect();
    if d.len() != 3 || c.len() != 3 {
        return Err("expected `M/D/YYYY h:mm:ss AM`".into());
    }
    let (month, day, year) = (num(d[0], "month")?, num(d[1], "day")?, num(d[2], "year")?);
    let (hour, minute, second) = (num(c[0], "hour")?, num(c[1], "minute")?, num(c[2], "second")?);
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} out of range"));
    }
    if year < 1970 || d[2].len() != 4 {
        return Err(format!("bad year `{}`", d[2]));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(format!("day {day} out of range"));
    }
    if !(1..=12).contains(&hour) || minute > 59 || second > 59 || c[1].len() != 2 || c[2].len() != 2 {
        return Err(format!("bad clock `{clock}`"));
    }
    let hour24 = match ampm {
        "AM" => hour % 12,
        "PM" => hour % 12 + 12,
        other => return Err(format!("expected AM or PM, found `{other}`")),
    };
    Ok(days_from_civil(year, month, day) * 86_400 + hour24 * 3600 + minute * 60 + second)
}

/// Formats unix seconds (UTC) the way MIND writes them: `11/13/2019 8:36:57 AM`.
pub fn format_time(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    let (h24, min, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let (h12, ampm) = match h24 {
        0 => (12, "AM"),
        1..=11 => (h24, "AM"),
        12 => (12, "PM"),
        _ => (h24 - 12, "PM"),
    };
    format!("{m}/{d}/{y} {h12}:{min:02}:{s:02} {ampm}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x.tsv")
    }

    #[test]
    fn time_round_trip_and_known_value() {
        // 2019-11-13 08:36:57 UTC
        assert_eq!(parse_time("11/13/2019 8:36:57 AM"), Ok(1_573_634_217));
        assert_eq!(parse_time("11/13/2019 12:00:00 AM"), Ok(1_573_603_200));
        assert_eq!(parse_time("11/13/2019 12:00:00 PM"), Ok(1_573_646_400));
        for t in [0, 1_573_634_217, 1_573_603_200, 1_573_646_400, 1_582_934_400, 1_573_689_599] {
            assert_eq!(parse_time(&format_time(t)), Ok(t), "{}", format_time(t));
        }
        assert_eq!(format_time(1_573_634_217), "11/13/2019 8:36:57 AM");
    }

    #[test]
    fn bad_times_are_rejected() {
        for t in [
            "13/13/2019 8:36:57 AM",
            "2/30/2019 8:36:57 AM",
            "11/13/2019 13:36:57 AM",
            "11/13/2019 8:36:57",
            "11/13/2019 8:36:57 XM",
            "2019-11-13 08:36:57",
            "11/13/19 8:36:57 AM",
            "11/13/2019 8:3:57 AM",
        ] {
            assert!(parse_time(t).is_err(), "{t}");
        }
    }

    #[test]
    fn behavior_line_labeled_and_unlabeled() {
        let b = parse_behavior_line(p(), 3, "7\tU1\t11/13/2019 8:36:57 AM\tN1 N2\tN3-1 N4-0\n").unwrap();
        assert_eq!(b.impression_id, 7);
        assert_eq!(b.history, vec!["N1", "N2"]);
        assert_eq!(b.impressions, vec![("N3", Some(1)), ("N4", Some(0))]);
        let b = parse_behavior_line(p(), 3, "7\tU1\t11/13/2019 8:36:57 AM\t\tN3 N4\r\n").unwrap();
        assert!(b.history.is_empty());
        assert_eq!(b.impressions, vec![("N3", None), ("N4", None)]);
    }

    #[test]
    fn behavior_line_errors_name_line_and_field() {
        let cases = [
            ("7\tU1\t11/13/2019 8:36:57 AM\tN1", "x.tsv:4: columns"),
            ("7\tU1\t11/13/2019 8:36:57 AM\tN1\tN1-7", "x.tsv:4: impressions: bad label in `N1-7`"),
            ("7\tU1\t11/13/2019 8:36:57 AM\tN1\tN1-1 N2", "x.tsv:4: impressions"),
            ("7\tU1\t11/13/2019 8:36:57 AM\tN1\t", "x.tsv:4: impressions: no candidates"),
            ("x\tU1\t11/13/2019 8:36:57 AM\tN1\tN2-1", "x.tsv:4: impression id"),
            ("7\tU1\t11/31/2019 8:36:57 AM\tN1\tN2-1", "x.tsv:4: time"),
        ];
        for (line, want) in cases {
            let err = parse_behavior_line(p(), 4, line).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err} does not start with {want}");
        }
    }

    #[test]
    fn news_line_parses_entities() {
        let line = "N1\tsports\tfootball\tTom Brady wins\tabs\thttp://x\t[{\"Label\": \"Tom Brady\", \"Type\": \"P\", \"WikidataId\": \"Q313381\", \"Confidence\": 1.0, \"OccurrenceOffsets\": [0], \"SurfaceForms\": [\"Tom Brady\"]}]\t[]";
        let n = parse_news_line(p(), 1, line).unwrap();
        assert_eq!(n.news_id, "N1");
        assert_eq!(n.title_entities.len(), 1);
        assert_eq!(n.title_entities[0].kind, "P");
        assert_eq!(n.title_entities[0].occurrence_offsets, vec![0]);
        assert!(n.content.starts_with("sports\t"));
    }

    #[test]
    fn news_line_errors() {
        let err = parse_news_line(p(), 9, "N1\ta\tb\tt\tabs\turl\t[").unwrap_err().to_string();
        assert!(err.starts_with("x.tsv:9: columns: expected 8"), "{err}");
        let err = parse_news_line(p(), 9, "N1\ta\tb\tt\tabs\turl\t[{]\t[]").unwrap_err().to_string();
        assert!(err.starts_with("x.tsv:9: title_entities: bad JSON"), "{err}");
        let bad = "N1\ta\tb\tt\tabs\turl\t[{\"Label\": \"x\", \"Type\": \"P\", \"WikidataId\": \"Q1\", \"Confidence\": 1.0, \"OccurrenceOffsets\": [0, 3], \"SurfaceForms\": [\"t\"]}]\t[]";
        let err = parse_news_line(p(), 9, bad).unwrap_err().to_string();
        assert!(err.contains("2 OccurrenceOffsets but 1 SurfaceForms"), "{err}");
    }

    #[test]
    fn vec_line() {
        let (id, v) = parse_vec_line(p(), 1, "Q1\t0.5\t-1\t2e-1\t\n").unwrap();
        assert_eq!((id, v), ("Q1", vec![0.5, -1.0, 0.2]));
        assert!(
            parse_vec_line(p(), 2, "Q1\t0.5\tabc").unwrap_err().to_string().starts_with("x.tsv:2: value 2")
        );
    }
}
