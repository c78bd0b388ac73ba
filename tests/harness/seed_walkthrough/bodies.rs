//! The seed's answers byte for byte (examples/seed/README.md explains their lengths), built from
//! the ConfigMap file golang-app-data serves at the moment.

/// The ConfigMap file as `kubectl apply -f artifacts/apps` creates it.
pub const CONFIG: &str = "{\n  \"key1\": \"value1\",\n  \"key2\": \"value2\"\n}\n";
/// The file after the seed's 热更新 step added key3 (its layout, key3 between key1 and key2).
pub const CONFIG_KEY3: &str =
    "{\n  \"key1\": \"value1\",\n  \"key3\": \"value3\",\n  \"key2\": \"value2\"\n}\n";

/// springboot-app's answer: v1 fixed, v2 wrapping the data service's file.
pub fn springboot(version: &str, config: &str) -> String {
    match version {
        "v1" => "response from: springboot app V1\n".to_string(),
        _ => format!(
            "response from: springboot app V2, args: <data from golang-app-data: [{config}] >\n"
        ),
    }
}

/// golang-app-gateway's frame around springboot-app's answer (without its final newline).
pub fn gateway(version: &str, config: &str) -> String {
    let inner = springboot(version, config);
    format!(
        "Gateway get from upstream: [\n\n {}\n\n]\n\n",
        inner.trim_end_matches('\n')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_content_lengths() {
        // The seed's curl: 68 (gateway V1), 171 (gateway V2 with key3), 136 (springboot V2).
        assert_eq!(gateway("v1", CONFIG_KEY3).len(), 68);
        assert_eq!(gateway("v2", CONFIG_KEY3).len(), 171);
        assert_eq!(springboot("v2", CONFIG_KEY3).len(), 136);
    }
}
