//! Statistics as tables, written to CSV (RFC 4180, UTF-8 with a byte-order mark so spreadsheet
//! programs detect the encoding), XLSX (rust_xlsxwriter) and ODS (spreadsheet-ods). Headers are
//! in the reader's language; numbers stay numbers and ratios are percentages.

use relais_edge::stats::Agg;

use crate::stats::{Report, Step, stamp};

#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Text(String),
    Int(u64),
    Ratio(Option<f64>),
}

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Xlsx,
    Ods,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "csv" => Some(Format::Csv),
            "xlsx" => Some(Format::Xlsx),
            "ods" => Some(Format::Ods),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Ods => "application/vnd.oasis.opendocument.spreadsheet",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
            Format::Ods => "ods",
        }
    }
}

const COLUMNS: &[(&str, &str)] = &[
    ("Requêtes", "Requests"),
    ("Visiteurs (estimation)", "Visitors (estimate)"),
    ("Octets envoyés", "Bytes sent"),
    ("Octets servis du cache", "Bytes from cache"),
    ("Octets venus de l'origine", "Bytes from origin"),
    ("Succès cache", "Hits"),
    ("Périmés servis", "Stale served"),
    ("Échecs cache", "Misses"),
    ("Contournements", "Bypass"),
    ("Erreurs", "Errors"),
    ("1xx", "1xx"),
    ("2xx", "2xx"),
    ("3xx", "3xx"),
    ("4xx", "4xx"),
    ("5xx", "5xx"),
    ("Taux de succès (requêtes)", "Hit ratio (requests)"),
    ("Taux de succès (octets)", "Hit ratio (bytes)"),
    ("Part sous 2 s", "Share under 2 s"),
];

fn cells(a: &Agg) -> Vec<Cell> {
    let mut v = vec![
        Cell::Int(a.requests),
        Cell::Int(a.visitors.estimate()),
        Cell::Int(a.bytes_sent),
        Cell::Int(a.bytes_cached),
        Cell::Int(a.bytes_origin),
        Cell::Int(a.hits),
        Cell::Int(a.stale),
        Cell::Int(a.misses),
        Cell::Int(a.bypass),
        Cell::Int(a.errors),
    ];
    v.extend(a.status.iter().map(|&n| Cell::Int(n)));
    v.push(Cell::Ratio(a.hit_ratio()));
    v.push(Cell::Ratio(a.byte_hit_ratio()));
    v.push(Cell::Ratio(a.under_2s()));
    v
}

fn headers(first: &str, fr: bool) -> Vec<String> {
    std::iter::once(first.to_owned())
        .chain(
            COLUMNS
                .iter()
                .map(|(f, e)| if fr { *f } else { *e }.to_owned()),
        )
        .collect()
}

/// One row per step of a site's report, then the total.
pub fn series_table(title: &str, r: &Report, step: Step, fr: bool) -> Table {
    let first = if fr { "Période (UTC)" } else { "Period (UTC)" };
    let rows = r.points.iter().map(|(at, a)| (stamp(*at, step), a));
    labelled_table(title, first, rows, r, fr)
}

/// One row per site of an organisation's report, then the total.
pub fn sites_table(title: &str, r: &Report, fr: bool) -> Table {
    let rows = r.sites.iter().map(|(s, a)| (s.clone(), a));
    labelled_table(title, "Site", rows, r, fr)
}

/// Rows of figures, each after its label, then the report's total.
fn labelled_table<'a>(
    title: &str,
    first: &str,
    rows: impl Iterator<Item = (String, &'a Agg)>,
    r: &'a Report,
    fr: bool,
) -> Table {
    let rows = rows
        .chain(std::iter::once(("Total".to_owned(), &r.total)))
        .map(|(label, a)| {
            let mut row = vec![Cell::Text(label)];
            row.extend(cells(a));
            row
        })
        .collect();
    Table {
        title: title.to_owned(),
        headers: headers(first, fr),
        rows,
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn to_csv(t: &Table) -> Vec<u8> {
    let mut out = String::from("\u{feff}");
    let line = |v: Vec<String>| v.join(",") + "\r\n";
    out.push_str(&line(t.headers.iter().map(|h| csv_field(h)).collect()));
    for row in &t.rows {
        out.push_str(&line(
            row.iter()
                .map(|c| match c {
                    Cell::Text(s) => csv_field(s),
                    Cell::Int(n) => n.to_string(),
                    Cell::Ratio(Some(r)) => format!("{:.4}", r),
                    Cell::Ratio(None) => String::new(),
                })
                .collect(),
        ));
    }
    out.into_bytes()
}

fn sheet_name(title: &str) -> String {
    // Both formats refuse some characters in sheet names and Excel caps them at 31.
    let s: String = title
        .chars()
        .map(|c| if "[]:*?/\\'".contains(c) { '_' } else { c })
        .take(31)
        .collect();
    if s.is_empty() {
        "Statistiques".into()
    } else {
        s
    }
}

pub fn to_xlsx(t: &Table) -> Result<Vec<u8>, String> {
    use rust_xlsxwriter::{Format as XFormat, Workbook};
    let mut wb = Workbook::new();
    let bold = XFormat::new().set_bold();
    let pct = XFormat::new().set_num_format("0.0%");
    let ws = wb.add_worksheet();
    ws.set_name(sheet_name(&t.title))
        .map_err(|e| e.to_string())?;
    for (c, h) in t.headers.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, h, &bold)
            .map_err(|e| e.to_string())?;
        ws.set_column_width(c as u16, if c == 0 { 22 } else { 14 })
            .map_err(|e| e.to_string())?;
    }
    for (r, row) in t.rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Text(s) => ws.write_string(r, c, s).map(|_| ()),
                Cell::Int(n) => ws.write_number(r, c, *n as f64).map(|_| ()),
                Cell::Ratio(Some(x)) => ws.write_number_with_format(r, c, *x, &pct).map(|_| ()),
                Cell::Ratio(None) => Ok(()),
            }
            .map_err(|e| e.to_string())?;
        }
    }
    wb.save_to_buffer().map_err(|e| e.to_string())
}

pub fn to_ods(t: &Table) -> Result<Vec<u8>, String> {
    use spreadsheet_ods::{CellStyle, Sheet, ValueFormatPercentage, WorkBook};
    let mut wb = WorkBook::new_empty();
    let mut f = ValueFormatPercentage::new_named("pct1");
    f.part_number()
        .decimal_places(1)
        .min_integer_digits(1)
        .build();
    f.part_text("%").build();
    let f = wb.add_percentage_format(f);
    let style = wb.add_cellstyle(CellStyle::new("pct", &f));
    let mut sheet = Sheet::new(sheet_name(&t.title));
    for (c, h) in t.headers.iter().enumerate() {
        sheet.set_value(0, c as u32, h.as_str());
    }
    for (r, row) in t.rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u32;
            match cell {
                Cell::Text(s) => sheet.set_value(r, c, s.as_str()),
                Cell::Int(n) => sheet.set_value(r, c, *n as f64),
                Cell::Ratio(Some(x)) => {
                    sheet.set_styled_value(r, c, spreadsheet_ods::Value::Percentage(*x), &style)
                }
                Cell::Ratio(None) => {}
            }
        }
    }
    wb.push_sheet(sheet);
    spreadsheet_ods::write_ods_buf(&mut wb, Vec::new()).map_err(|e| e.to_string())
}

pub fn render(t: &Table, f: Format) -> Result<Vec<u8>, String> {
    match f {
        Format::Csv => Ok(to_csv(t)),
        Format::Xlsx => to_xlsx(t),
        Format::Ods => to_ods(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_leaves_numbers_bare() {
        let t = Table {
            title: "x".into(),
            headers: vec!["a,b".into(), "c".into()],
            rows: vec![vec![
                Cell::Text("say \"hi\"".into()),
                Cell::Ratio(Some(0.5)),
            ]],
        };
        let s = String::from_utf8(to_csv(&t)).expect("utf-8");
        assert_eq!(s, "\u{feff}\"a,b\",c\r\n\"say \"\"hi\"\"\",0.5000\r\n");
    }

    #[test]
    fn sheet_names_are_made_acceptable() {
        assert_eq!(sheet_name("a/b:c"), "a_b_c");
        assert_eq!(sheet_name(&"x".repeat(40)).len(), 31);
    }
}
