//! `mirror.toml`: any text is a valid configuration or an error, and a valid one prints (as
//! `check-config` does) to text that parses back to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = wharf::Config::parse(text) {
        let printed = config.to_toml();
        assert_eq!(wharf::Config::parse(&printed).unwrap(), config, "{printed}");
    }
});
