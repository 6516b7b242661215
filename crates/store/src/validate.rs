//! Input validation shared by the API and CLI. App names end up in
//! hostnames (`<app>.<base domain>`), directory names and log paths, so they
//! are restricted to a single safe DNS label.

/// Names that would collide with berth's own hostnames or routes.
const RESERVED_APP_NAMES: &[&str] = &["berth", "www", "api"];

/// Checks an app name: 1–63 chars of `a-z`, `0-9`, `-`, starting with a
/// letter, not ending with `-`, and not reserved.
pub fn valid_app_name(name: &str) -> Result<(), String> {
    const RULE: &str = "app names are 1-63 characters of lowercase letters, digits and '-', \
                        start with a letter and don't end with '-'";
    let starts_with_letter = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let ok = (1..=63).contains(&name.len())
        && starts_with_letter
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(format!("invalid app name {name:?}: {RULE}"));
    }
    if RESERVED_APP_NAMES.contains(&name) {
        return Err(format!(
            "app name {name:?} is reserved (reserved: {})",
            RESERVED_APP_NAMES.join(", ")
        ));
    }
    Ok(())
}

/// Checks a custom domain: a lowercase DNS name of at least two labels, each
/// 1–63 chars of `a-z`, `0-9`, `-` not starting or ending with `-`, at most
/// 253 chars in total. Single-label names like `localhost` are rejected since
/// no certificate authority would issue for them.
pub fn valid_host(host: &str) -> Result<(), String> {
    const RULE: &str = "domains are lowercase DNS names with at least one dot, \
                        labels of 1-63 characters of a-z, 0-9 and '-' (not at either end), \
                        253 characters at most";
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let ok = host.len() <= 253 && host.contains('.') && host.split('.').all(label_ok);
    if ok {
        Ok(())
    } else {
        Err(format!("invalid domain {host:?}: {RULE}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        let long_ok = format!("a{}", "b".repeat(62));
        let too_long = format!("a{}", "b".repeat(63));
        let cases: &[(&str, bool)] = &[
            ("web", true),
            ("my-app-2", true),
            ("a", true),
            (&long_ok, true),
            ("", false),
            (&too_long, false),
            ("2app", false),
            ("-app", false),
            ("app-", false),
            ("App", false),
            ("my_app", false),
            ("my.app", false),
            ("héllo", false),
            ("berth", false),
            ("www", false),
            ("api", false),
            ("apis", true),
        ];
        for (name, want) in cases {
            assert_eq!(valid_app_name(name).is_ok(), *want, "{name:?}");
        }
        assert!(valid_app_name("Bad").unwrap_err().contains("lowercase"));
        assert!(valid_app_name("api").unwrap_err().contains("reserved"));
    }

    #[test]
    fn hosts() {
        let long_label = "a".repeat(64);
        let long_label_host = format!("{long_label}.com");
        let max_label_host = format!("{}.com", "a".repeat(63));
        // 4 labels of 63 + 3 dots = 255 > 253.
        let too_long = vec!["a".repeat(63); 4].join(".");
        let cases: &[(&str, bool)] = &[
            ("example.com", true),
            ("www.example.com", true),
            ("a-b.c1.io", true),
            ("xn--bcher-kva.example", true),
            (&max_label_host, true),
            ("localhost", false),
            ("", false),
            ("Example.com", false),
            ("-a.com", false),
            ("a-.com", false),
            ("a..com", false),
            (".example.com", false),
            ("example.com.", false),
            ("exa_mple.com", false),
            ("*.example.com", false),
            ("example.com:80", false),
            (&long_label_host, false),
            (&too_long, false),
        ];
        for (host, want) in cases {
            assert_eq!(valid_host(host).is_ok(), *want, "{host:?}");
        }
    }
}
