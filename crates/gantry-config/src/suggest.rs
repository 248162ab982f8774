//! "did you mean" for misspelled keys and names.

/// The candidate closest to `given`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), c))
        .filter(|&(distance, candidate)| {
            // Allow about one typo in three characters, and always one.
            distance <= (candidate.len().max(given.len()) / 3).max(1)
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["health", "replicas", "routes", "run"];
        assert_eq!(did_you_mean("helth", keys), Some("health"));
        assert_eq!(did_you_mean("replica", keys), Some("replicas"));
        assert_eq!(did_you_mean("rnu", keys), Some("run"));
        assert_eq!(did_you_mean("database", keys), None);
    }
}
