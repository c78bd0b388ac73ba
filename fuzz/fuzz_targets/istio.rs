//! Every YAML document as a VirtualService and as a DestinationRule, whatever its kind: Istio's
//! validation on the document, then the conversion to the model (both also run by the manifests
//! source, but only on documents of their kind and version).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpath_source::istio;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = serde_saphyr::from_multiple::<serde_json::Value>(text) else {
        return;
    };
    for doc in docs {
        let _ = format!("{:?}", istio::validation::virtual_service(&doc));
        let _ = format!("{:?}", istio::validation::destination_rule(&doc));
        match istio::virtual_service(doc.clone()) {
            Ok(vs) => drop(format!("{vs:?}")),
            Err(e) => drop(e.to_string()),
        }
        match istio::destination_rule(doc) {
            Ok(dr) => drop(format!("{dr:?}")),
            Err(e) => drop(e.to_string()),
        }
    }
});
