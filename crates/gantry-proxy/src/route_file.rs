//! `routes.json` in the state directory: the last table the proxy accepted,
//! written atomically (temporary file, fsync, rename, fsync of the directory)
//! before the table is served, and read back at start so a restarted proxy
//! routes as before.

use std::path::{Path, PathBuf};

use crate::error::ProxyError;
use crate::table::RouteTable;
use gantry_file::FileError;

pub(crate) fn path(state_dir: &Path) -> PathBuf {
    crate::ProxyDir::new(state_dir).routes_file()
}

/// The saved table; an empty one when none was saved yet.
pub(crate) fn load(path: &Path) -> Result<RouteTable, ProxyError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RouteTable::default()),
        Err(source) => return Err(FileError::at("read", path)(source).into()),
    };
    let table: RouteTable = serde_json::from_slice(&text).map_err(|e| ProxyError::SavedRoutes {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    table.validate().map_err(|e| ProxyError::SavedRoutes {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(table)
}

pub(crate) fn save(path: &Path, table: &RouteTable) -> Result<(), ProxyError> {
    let mut text =
        serde_json::to_vec_pretty(table).map_err(|e| FileError::at("encode", path)(e.into()))?;
    text.push(b'\n');
    // 0666 before the umask, as `File::create` makes files.
    gantry_file::write_atomic(path, &text, 0o666).map_err(FileError::of("write", path))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::table::Route;

    #[test]
    fn a_saved_table_loads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path(dir.path());
        assert_eq!(load(&path).expect("loads"), RouteTable::default());
        let table = RouteTable {
            routes: vec![
                Route::new("web", vec![SocketAddr::from(([127, 0, 0, 1], 3000))]).hosts(["a.test"]),
            ],
        };
        save(&path, &table).expect("saves");
        assert_eq!(load(&path).expect("loads"), table);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("lists")
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "routes.json")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path(dir.path());
        std::fs::write(&path, "{\"routes\": [").expect("writes");
        let error = load(&path).expect_err("refused");
        assert_eq!(error.code(), "proxy.saved_routes_invalid");
        assert!(error.to_string().contains("routes.json"), "{error}");
    }
}
