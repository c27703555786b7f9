//! Checks on the positional JSON arguments of a driver call. Clients send every number as a
//! double, so whole numbers are accepted as `1.0`.

use crate::{DriverError, Json};

/// Fails unless `args` has exactly `n` entries.
pub fn expect_count(method: &str, args: &[Json], n: usize) -> Result<(), DriverError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(DriverError::InvalidArgument(format!(
            "{method}() takes {n} argument{}, got {}",
            if n == 1 { "" } else { "s" },
            args.len()
        )))
    }
}

/// The argument at `index` as a bool.
pub fn boolean(method: &str, args: &[Json], index: usize) -> Result<bool, DriverError> {
    match args.get(index) {
        Some(Json::Bool(b)) => Ok(*b),
        other => Err(type_error(method, index, "true or false", other)),
    }
}

/// The argument at `index` as a number, or `None` when it is null or absent.
pub fn optional_number(
    method: &str,
    args: &[Json],
    index: usize,
) -> Result<Option<f64>, DriverError> {
    match args.get(index) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => Ok(n.as_f64()),
        other => Err(type_error(method, index, "a number or null", other)),
    }
}

/// The argument at `index` as text.
pub fn text<'a>(method: &str, args: &'a [Json], index: usize) -> Result<&'a str, DriverError> {
    match args.get(index) {
        Some(Json::String(s)) => Ok(s),
        other => Err(type_error(method, index, "text", other)),
    }
}

fn type_error(method: &str, index: usize, expected: &str, found: Option<&Json>) -> DriverError {
    let found = match found {
        None => "nothing".to_string(),
        Some(v) => v.to_string(),
    };
    DriverError::InvalidArgument(format!(
        "{method}(): argument {} must be {expected}, got {found}",
        index + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_and_types_are_checked() {
        assert!(expect_count("on", &[], 0).is_ok());
        let err = expect_count("on", &[json!(1)], 0).unwrap_err();
        assert_eq!(err.to_string(), "on() takes 0 arguments, got 1");
        assert!(boolean("set_dtr", &[json!(true)], 0).unwrap());
        let err = boolean("set_dtr", &[json!("yes")], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "set_dtr(): argument 1 must be true or false, got \"yes\""
        );
        assert_eq!(optional_number("w", &[json!(2.0)], 0).unwrap(), Some(2.0));
        assert_eq!(optional_number("w", &[json!(null)], 0).unwrap(), None);
        assert!(matches!(
            text("w", &[json!(1)], 0),
            Err(DriverError::InvalidArgument(_))
        ));
    }
}
