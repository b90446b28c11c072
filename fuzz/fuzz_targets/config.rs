//! The configuration loader: any text is a valid configuration or a list of problems, each
//! naming a key or a line; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    // No environment: `${NAME}` is looked up in an empty one, so results do not depend on the
    // machine.
    match aoai_proxy::config::Config::from_yaml_with_env(text, |_| None) {
        Ok(_) => {}
        Err(problems) => assert!(!problems.is_empty(), "refused without a reason"),
    }
});
