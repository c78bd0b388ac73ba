//! A manifest file's text through the manifests source: YAML (every document, `List` items),
//! Kubernetes and Istio objects, conversion to the model, and the errors and notices it reports
//! (each formatted, as the agent logs them).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (result, notices) =
        meshpath_source::manifests::parse_file_noting(Path::new("f.yaml"), text);
    if let Err(errors) = result {
        for e in errors {
            let _ = e.to_string();
        }
    }
    for n in notices {
        let _ = format!("{n:?}");
    }
});
