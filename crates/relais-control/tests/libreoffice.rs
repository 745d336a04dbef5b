//! Our XLSX and ODS statistics exports, opened by LibreOffice (headless) and converted back to
//! CSV: every figure must read the same as in our own CSV export. `scripts/test` installs
//! LibreOffice and sets `RELAIS_REQUIRE_LIBREOFFICE`.

use std::path::Path;
use std::process::Command;

use relais_control::sheets::{self, Format};
use relais_control::stats::{Report, Step};
use relais_edge::stats::{Agg, Class, Request, visitor_hash};

fn soffice() -> Option<&'static str> {
    ["soffice", "libreoffice"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn report() -> Report {
    let mut r = Report::default();
    for i in 0..24u64 {
        let mut a = Agg::default();
        for j in 0..(i * 7 + 1) {
            let class = match j % 5 {
                0 | 1 => Class::Hit,
                2 => Class::Miss,
                3 => Class::Stale,
                _ if i % 3 == 0 => Class::Error,
                _ => Class::Bypass,
            };
            a.record(&Request {
                class,
                status: if class == Class::Error { 503 } else { 200 },
                ttfb_ms: j * 37,
                sent: 1000 + j * 13,
                visitor: visitor_hash([10, 0, (i % 4) as u8, (j % 50) as u8].into(), Some(b"ua")),
            });
        }
        r.total.merge(&a);
        r.points
            .push((1_790_000_000 - 1_790_000_000 % 86_400 + i as i64 * 3600, a));
    }
    r
}

/// Rows of a CSV file (no quoting in these files beyond headers).
fn rows(text: &str) -> Vec<Vec<String>> {
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(|l| {
            l.split(',')
                .map(|c| c.trim_matches('"').to_owned())
                .collect()
        })
        .collect()
}

fn convert(bin: &str, dir: &Path, file: &Path) -> String {
    let out = dir.join("out");
    let status = Command::new(bin)
        .arg("--headless")
        .arg("--norestore")
        .arg(format!(
            "-env:UserInstallation=file://{}",
            dir.join("profile").display()
        ))
        .arg("--convert-to")
        .arg("csv:Text - txt - csv (StarCalc):44,34,76,1")
        .arg("--outdir")
        .arg(&out)
        .arg(file)
        .output()
        .expect("run LibreOffice");
    assert!(status.status.success(), "{status:?}");
    let name = file.with_extension("csv");
    let name = name.file_name().expect("name");
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{e}: {status:?}"))
}

#[test]
fn libreoffice_reads_our_xlsx_and_ods_exports() {
    let Some(bin) = soffice() else {
        assert!(
            std::env::var("RELAIS_REQUIRE_LIBREOFFICE").is_err(),
            "LibreOffice is required (RELAIS_REQUIRE_LIBREOFFICE) but not installed"
        );
        eprintln!("LibreOffice not installed: skipped here");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let table = sheets::series_table("site:démo/1", &report(), Step::Hour, true);
    let ours = rows(&String::from_utf8(sheets::to_csv(&table)).expect("utf-8"));
    assert_eq!(ours.len(), 26);
    for f in [Format::Xlsx, Format::Ods] {
        let path = dir.path().join(format!("export.{}", f.extension()));
        std::fs::write(&path, sheets::render(&table, f).expect("render")).expect("write");
        let theirs = rows(&convert(bin, dir.path(), &path));
        assert_eq!(theirs.len(), ours.len(), "{f:?}");
        assert_eq!(theirs[0], ours[0], "{f:?}: headers");
        for (a, b) in ours.iter().zip(&theirs).skip(1) {
            assert_eq!(a.len(), b.len(), "{f:?}: {a:?} / {b:?}");
            assert_eq!(a[0], b[0], "{f:?}: period");
            for c in 1..a.len() {
                if a[c].contains('.') || b[c].ends_with('%') {
                    // Ratios: ours as a fraction, LibreOffice's as the formatted percentage.
                    let x: f64 = a[c].parse().expect("ratio");
                    let y: f64 = b[c].trim_end_matches('%').trim().parse().expect("percent");
                    assert!((x * 100.0 - y).abs() <= 0.051, "{f:?} col {c}: {x} / {y}");
                } else {
                    assert_eq!(a[c], b[c], "{f:?} col {c}");
                }
            }
        }
    }
}
