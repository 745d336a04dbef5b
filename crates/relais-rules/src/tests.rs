use super::*;

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

fn rule(id: &str, scope: Scope, f: impl FnOnce(&mut Settings)) -> Rule {
    let mut settings = Settings::default();
    f(&mut settings);
    Rule {
        id: id.into(),
        scope,
        settings,
    }
}

fn dir(d: &str) -> Scope {
    Scope::Dir(d.into())
}

fn base_rules() -> Vec<Rule> {
    vec![
        rule("platform", Scope::Platform, |s| {
            s.cache = Some(true);
            s.edge_ttl = secs(3600);
            s.browser_ttl = secs(60);
            s.query = Some(QueryMode::Keep);
        }),
        rule("site", Scope::Site, |s| s.edge_ttl = secs(600)),
        rule("images", Scope::Group("images".into()), |s| {
            s.edge_ttl = secs(86400);
            s.browser_ttl = secs(3600);
        }),
        rule("png", Scope::ContentType("image/png".into()), |s| {
            s.edge_ttl = secs(7 * 86400)
        }),
        rule("news", dir("/news/"), |s| {
            s.edge_ttl = secs(30);
            s.query = Some(QueryMode::Drop(vec!["utm_*".into()]));
        }),
        rule("live", dir("/news/live/"), |s| s.edge_ttl = secs(5)),
        rule("home", Scope::Page("/news/index.html".into()), |s| {
            s.edge_ttl = secs(10)
        }),
        rule("account", dir("/account/"), |s| s.cache = Some(false)),
        rule("no-video", Scope::Group("video".into()), |s| {
            s.cache = Some(false)
        }),
    ]
}

/// (path, content type, expected edge TTL seconds, expected winning rule)
#[test]
fn precedence_table() {
    let rs = RuleSet::new(base_rules(), Groups::default()).expect("valid");
    let cases: &[(&str, Option<&str>, u64, &str)] = &[
        ("/about", None, 600, "site"),
        ("/about", Some("text/html"), 600, "site"),
        ("/logo.jpg", Some("image/jpeg"), 86400, "images"),
        (
            "/logo.png",
            Some("image/png; charset=binary"),
            7 * 86400,
            "png",
        ),
        ("/news/a.html", Some("text/html"), 30, "news"),
        ("/news/a.png", Some("image/png"), 30, "news"),
        ("/news/live/x", None, 5, "live"),
        ("/news/live/x.png", Some("image/png"), 5, "live"),
        ("/news/index.html", Some("text/html"), 10, "home"),
        ("/newsletter", None, 600, "site"),
    ];
    for (path, ct, ttl, winner) in cases {
        let got = rs.resolve(path, *ct);
        assert_eq!(got.edge_ttl, secs(*ttl), "{path} {ct:?}");
        let ex = rs.explain(path, *ct);
        let e = ex
            .iter()
            .find(|e| e.setting == "edge_ttl")
            .expect("edge_ttl");
        assert_eq!(
            e.winner.as_ref().map(|w| w.0.as_str()),
            Some(*winner),
            "{path} {ct:?}"
        );
    }
    // Each setting on its own: the browser TTL of a PNG under /news/ comes from the images
    // group (the directory rule does not set it), its edge TTL from the directory.
    let s = rs.resolve("/news/a.png", Some("image/png"));
    assert_eq!((s.edge_ttl, s.browser_ttl), (secs(30), secs(3600)));
    assert!(rs.uses("browser_ttl") && rs.uses("query") && !rs.uses("key_cookies"));
    // Bypass is a path decision; "do not store" is a content decision.
    assert_eq!(rs.resolve("/account/me", None).cache, Some(false));
    assert_eq!(
        rs.resolve("/films/a.mp4", None).cache,
        Some(true),
        "before the response: path rules only"
    );
    assert_eq!(
        rs.resolve("/films/a.mp4", Some("video/mp4")).cache,
        Some(false)
    );
    // Request-time settings never come from content scopes.
    assert_eq!(
        rs.resolve("/news/a.png", Some("image/png")).query,
        Some(QueryMode::Drop(vec!["utm_*".into()]))
    );
}

#[test]
fn explain_lists_winner_and_overridden_rules() {
    let rs = RuleSet::new(base_rules(), Groups::default()).expect("valid");
    let ex = rs.explain("/news/live/a.png", Some("image/png"));
    let e = ex
        .iter()
        .find(|e| e.setting == "edge_ttl")
        .expect("edge_ttl");
    assert_eq!(e.value.as_deref(), Some("5s"));
    let beaten: Vec<&str> = e.overridden.iter().map(|o| o.rule.as_str()).collect();
    assert_eq!(beaten, ["news", "png", "images", "site", "platform"]);
    assert!(
        e.overridden[0]
            .reason
            .contains("directory /news/live/ is more specific than directory /news/"),
        "{:?}",
        e.overridden[0]
    );
    let text = render_explain(&ex);
    assert!(text.contains("edge_ttl"), "{text}");
    assert!(
        text.contains("overrides rule png (content type image/png) = 604800s"),
        "{text}"
    );
    let q = ex.iter().find(|e| e.setting == "query").expect("query");
    assert!(
        q.note
            .as_deref()
            .is_some_and(|n| n.contains("before the response"))
    );
}

#[test]
fn conflicts_and_bad_rules_are_refused_in_both_languages() {
    let mut rules = base_rules();
    rules.push(rule("news-again", dir("/news/"), |s| s.edge_ttl = secs(99)));
    rules.push(rule("bad-dir", dir("news"), |s| s.edge_ttl = secs(1)));
    rules.push(rule("bad-group", Scope::Group("pictures".into()), |s| {
        s.edge_ttl = secs(1)
    }));
    rules.push(rule("bad-type", Scope::ContentType("PNG".into()), |s| {
        s.edge_ttl = secs(1)
    }));
    rules.push(rule(
        "key-on-type",
        Scope::ContentType("text/html".into()),
        |s| s.query = Some(QueryMode::Ignore),
    ));
    let errs = RuleSet::new(rules, Groups::default()).expect_err("refused");
    let by_code = |c: &str| {
        errs.iter()
            .find(|e| e.code == c)
            .unwrap_or_else(|| panic!("no {c} in {errs:?}"))
    };
    let conflict = by_code("conflicting_rules");
    assert_eq!(conflict.field, "rules[9].edge_ttl");
    assert!(
        conflict.en.contains("\"news\"") && conflict.en.contains("\"news-again\""),
        "{}",
        conflict.en
    );
    assert!(
        conflict.fr.contains("« news »") && conflict.fr.contains("le répertoire /news/"),
        "{}",
        conflict.fr
    );
    assert_eq!(by_code("invalid_dir").field, "rules[10].dir");
    assert!(by_code("unknown_group").en.contains("images"));
    assert_eq!(
        by_code("invalid_content_type").field,
        "rules[12].content_type"
    );
    assert_eq!(
        by_code("request_setting_on_content_scope").field,
        "rules[13].query"
    );
    assert_eq!(errs.len(), 5, "{errs:?}");
    // Same scope, different settings: fine.
    let ok = vec![
        rule("a", dir("/x/"), |s| s.edge_ttl = secs(1)),
        rule("b", dir("/x/"), |s| s.browser_ttl = secs(1)),
    ];
    assert!(RuleSet::new(ok, Groups::default()).is_ok());
}

#[test]
fn query_modes() {
    let q = "utm_source=x&b=2&a=1&utm_medium=y&id=7";
    assert_eq!(QueryMode::Keep.apply(q), q);
    assert_eq!(QueryMode::Ignore.apply(q), "");
    assert_eq!(
        QueryMode::Sorted.apply(q),
        "a=1&b=2&id=7&utm_medium=y&utm_source=x"
    );
    assert_eq!(
        QueryMode::Drop(vec!["utm_*".into()]).apply(q),
        "a=1&b=2&id=7"
    );
    assert_eq!(
        QueryMode::Only(vec!["id".into(), "a".into()]).apply(q),
        "a=1&id=7"
    );
    assert_eq!(QueryMode::Drop(vec!["b".into()]).apply("b=1&bb=2"), "bb=2");
}

#[test]
fn groups_are_resolved_by_the_most_specific_pattern() {
    let g = Groups::default();
    assert_eq!(g.group_of("image/svg+xml"), Some("images"));
    assert_eq!(
        g.group_of("application/vnd.oasis.opendocument.text"),
        Some("documents")
    );
    assert_eq!(g.group_of("application/vnd.apple.mpegurl"), Some("video"));
    assert_eq!(g.group_of("application/octet-stream"), None);
    assert_eq!(media_type("Text/HTML; charset=UTF-8"), "text/html");
}

/// Adding a rule never changes the decision for a URL outside its scope.
#[test]
fn adding_a_rule_only_affects_its_scope() {
    let mut seed: u64 = 0x0123_4567_89ab_cdef;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let dirs = ["/a/", "/a/b/", "/a/b/c/", "/d/", "/d/e/"];
    let pages = ["/a/x", "/a/b/y", "/d/z", "/top"];
    let types = [
        "text/html",
        "image/png",
        "image/jpeg",
        "video/mp4",
        "application/pdf",
    ];
    let groups = ["images", "video", "documents", "html"];
    let random_rule = |id: usize, next: &mut dyn FnMut(u64) -> u64| {
        let scope = match next(5) {
            0 => Scope::Site,
            1 => Scope::Group(groups[next(groups.len() as u64) as usize].into()),
            2 => Scope::ContentType(types[next(types.len() as u64) as usize].into()),
            3 => Scope::Dir(dirs[next(dirs.len() as u64) as usize].into()),
            _ => Scope::Page(pages[next(pages.len() as u64) as usize].into()),
        };
        rule(&format!("r{id}"), scope, |s| match next(3) {
            0 => s.edge_ttl = secs(1 + next(1000)),
            1 => s.browser_ttl = secs(1 + next(1000)),
            _ => s.cache = Some(next(2) == 0),
        })
    };
    let probes: Vec<(String, Option<&str>)> = [
        "/a/x", "/a/b/y", "/a/b/c/w", "/d/z", "/d/e/f", "/top", "/other",
    ]
    .iter()
    .flat_map(|p| {
        let mut v = vec![(p.to_string(), None)];
        v.extend(types.iter().map(|t| (p.to_string(), Some(*t))));
        v
    })
    .collect();
    let g = Groups::default();
    let mut checked = 0;
    for case in 0..300 {
        let n = next(8) as usize;
        let rules: Vec<Rule> = (0..n).map(|i| random_rule(i, &mut next)).collect();
        let Ok(before) = RuleSet::new(rules.clone(), g.clone()) else {
            continue;
        };
        let extra = random_rule(100 + case, &mut next);
        let mut more = rules.clone();
        more.push(extra.clone());
        let Ok(after) = RuleSet::new(more, g.clone()) else {
            continue;
        };
        for (path, ct) in &probes {
            if extra.scope.matches(path, *ct, &g) {
                continue;
            }
            assert_eq!(
                before.resolve(path, *ct),
                after.resolve(path, *ct),
                "rule {extra:?} changed {path} {ct:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} comparisons");
}
