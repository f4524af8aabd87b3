#!/usr/bin/env python3
"""Generates crates/gyre-server/src/centrifugo_v6_keys.tsv: every leaf key of the
Centrifugo v6 configuration, with its type, its default and whether Gyre
implements it.

Source: the config structs of centrifugal/centrifugo v6 (internal/config/config.go,
internal/configtypes/{types,namespace,rpc_namespace,engine,redis,tls}.go), transcribed
below as (key, type, default) rows per struct. Only key names, types and defaults
are taken: that is the configuration interface Gyre must accept. Embedded structs
(`mapstructure:",squash"`) are spliced in with "squash:Name"; "[]Name" is an array of
objects whose element keys are listed as `parent[].key`; "object" is a subtree
recorded as one opaque key (its inner keys are known to Centrifugo but not listed
here, see the COMPLETENESS note); "map" is map[string]string.

Status column: read back from the existing TSV, so hand decisions survive a
regeneration; a key that is new to the list starts as "refused" (the safe default:
a user who sets it gets an error naming it instead of silently nothing). A status
may carry a group, "refused:grpc_api", meaning "refused until the group is listed
in LANDED_GROUPS in crates/gyre-server/src/config_keys.rs".

Usage: python3 tools/gen_centrifugo_v6_keys.py   (from the repository root)
"""

import os
import sys

COMPLETENESS = (
    "# Transcribed from centrifugal/centrifugo v6 config structs (types.go of the 6.x line with\n"
    "# map_broker and shared_poll, namespace.go, rpc_namespace.go, engine.go, redis.go, tls.go, config.go).\n"
    "# Opaque subtrees (type object: any non-default content is refused when selected): broker.postgres,\n"
    "# broker.redisnats, map_broker.redis, map_broker.postgres, consumers[] type-specific sections,\n"
    "# namespace map and shared_poll sections. Not listed: the development-only top-level controller.\n"
)

TLS = [
    ("enabled", "bool", "false"),
    ("cert_pem", "string", ""),
    ("key_pem", "string", ""),
    ("server_ca_pem", "string", ""),
    ("client_ca_pem", "string", ""),
    ("insecure_skip_verify", "bool", "false"),
    ("server_name", "string", ""),
]

S = {
    "Config": [
        ("http_server", "HTTPServer", None),
        ("log", "Log", None),
        ("engine", "Engine", None),
        ("broker", "Broker", None),
        ("presence_manager", "PresenceManager", None),
        ("map_broker", "MapBroker", None),
        ("shared_poll", "SharedPoll", None),
        ("client", "Client", None),
        ("channel", "Channel", None),
        ("rpc", "RPC", None),
        ("proxies", "[]NamedProxy", None),
        ("http_api", "HttpAPI", None),
        ("grpc_api", "GrpcAPI", None),
        ("consumers", "[]Consumer", None),
        ("websocket", "WebSocket", None),
        ("sse", "SSE", None),
        ("http_stream", "HTTPStream", None),
        ("webtransport", "WebTransport", None),
        ("uni_sse", "UniSSE", None),
        ("uni_http_stream", "UniHTTPStream", None),
        ("uni_websocket", "UniWebSocket", None),
        ("uni_grpc", "UniGRPC", None),
        ("emulation", "Emulation", None),
        ("admin", "Admin", None),
        ("prometheus", "Prometheus", None),
        ("health", "Health", None),
        ("swagger", "Swagger", None),
        ("debug", "Debug", None),
        ("dev", "Dev", None),
        ("init", "ConnInit", None),
        ("opentelemetry", "OpenTelemetry", None),
        ("graphite", "Graphite", None),
        ("usage_stats", "UsageStats", None),
        ("node", "Node", None),
        ("shutdown", "Shutdown", None),
        ("pid_file", "string", ""),
        ("enable_unreleased_features", "bool", "false"),
    ],
    "TLSConfig": TLS,
    "SharedPoll": [
        ("hmac_secret_key", "string", ""),
        ("hmac_previous_secret_key", "string", ""),
        ("hmac_previous_secret_key_valid_until", "int", "0"),
        ("concurrency_limit", "int", "0"),
    ],
    "TLSAutocert": [
        ("enabled", "bool", "false"),
        ("host_whitelist", "[]string", "[]"),
        ("cache_dir", "string", ""),
        ("email", "string", ""),
        ("server_name", "string", ""),
        ("http", "bool", "false"),
        ("http_addr", "string", ":80"),
    ],
    "HTTP3": [("enabled", "bool", "false")],
    "HTTPServer": [
        ("address", "string", ""),
        ("port", "int", "8000"),
        ("internal_address", "string", ""),
        ("internal_port", "string", ""),
        ("tls", "TLSConfig", None),
        ("tls_autocert", "TLSAutocert", None),
        ("tls_external", "bool", "false"),
        ("internal_tls", "TLSConfig", None),
        ("http3", "HTTP3", None),
        ("h2c_external", "bool", "false"),
    ],
    "Log": [("level", "string", "info"), ("file", "string", "")],
    "Token": [
        ("hmac_secret_key", "string", ""),
        ("hmac_previous_secret_key", "string", ""),
        ("hmac_previous_secret_key_valid_until", "int", "0"),
        ("rsa_public_key", "string", ""),
        ("ecdsa_public_key", "string", ""),
        ("jwks_public_endpoint", "string", ""),
        ("audience", "string", ""),
        ("audience_regex", "string", ""),
        ("issuer", "string", ""),
        ("issuer_regex", "string", ""),
        ("user_id_claim", "string", ""),
        ("insecure_skip_jwks_endpoint_safety_check", "bool", "false"),
    ],
    "SubscriptionToken": [("enabled", "bool", "false"), ("", "squash:Token", None)],
    "WebSocket": [
        ("disabled", "bool", "false"),
        ("handler_prefix", "string", "/connection/websocket"),
        ("compression", "bool", "false"),
        ("compression_min_size", "int", "0"),
        ("compression_level", "int", "1"),
        ("read_buffer_size", "int", "0"),
        ("use_write_buffer_pool", "bool", "false"),
        ("write_buffer_size", "int", "0"),
        ("write_timeout", "duration", "1000ms"),
        ("message_size_limit", "int", "65536"),
        ("decompressed_message_size_limit", "int", "0"),
    ],
    "SSE": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", "/connection/sse"),
        ("max_request_body_size", "int", "65536"),
    ],
    "HTTPStream": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", "/connection/http_stream"),
        ("max_request_body_size", "int", "65536"),
    ],
    "WebTransport": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", "/connection/webtransport"),
        ("message_size_limit", "int", "65536"),
    ],
    "UniWebSocket": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", "/connection/uni_websocket"),
        ("compression", "bool", "false"),
        ("compression_min_size", "int", "0"),
        ("compression_level", "int", "1"),
        ("read_buffer_size", "int", "0"),
        ("use_write_buffer_pool", "bool", "false"),
        ("write_buffer_size", "int", "0"),
        ("write_timeout", "duration", "1000ms"),
        ("message_size_limit", "int", "65536"),
        ("decompressed_message_size_limit", "int", "0"),
        ("disable_closing_handshake", "bool", "false"),
        ("disable_disconnect_push", "bool", "false"),
        ("join_push_messages", "bool", "false"),
    ],
    "ConnectCodeToHTTPResponse": [
        ("enabled", "bool", "false"),
        ("transforms", "[]ConnectCodeToHTTPResponseTransform", None),
    ],
    "ConnectCodeToHTTPResponseTransform": [
        ("code", "int", "0"),
        ("to", "TransformedConnectErrorHttpResponse", None),
    ],
    "TransformedConnectErrorHttpResponse": [("status_code", "int", "0"), ("body", "string", "")],
    "UniHTTPStream": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", "/connection/uni_http_stream"),
        ("max_request_body_size", "int", "65536"),
        ("connect_code_to_http_response", "ConnectCodeToHTTPResponse", None),
    ],
    "UniSSE": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", "/connection/uni_sse"),
        ("max_request_body_size", "int", "65536"),
        ("connect_code_to_http_response", "ConnectCodeToHTTPResponse", None),
    ],
    "ConnInit": [("enabled", "bool", "false"), ("handler_prefix", "string", "/connection/init")],
    "UniGRPC": [
        ("enabled", "bool", "false"),
        ("address", "string", ""),
        ("port", "int", "11000"),
        ("max_receive_message_size", "int", "0"),
        ("tls", "TLSConfig", None),
    ],
    "PingPong": [("ping_interval", "duration", "25s"), ("pong_timeout", "duration", "8s")],
    "NatsBroker": [
        ("prefix", "string", "centrifugo"),
        ("url", "string", "nats://localhost:4222"),
        ("dial_timeout", "duration", "1s"),
        ("write_timeout", "duration", "1s"),
        ("tls", "TLSConfig", None),
        ("allow_wildcards", "bool", "false"),
        ("raw_mode", "RawModeConfig", None),
    ],
    "RawModeConfig": [
        ("enabled", "bool", "false"),
        ("channel_replacements", "map", "{}"),
        ("prefix", "string", ""),
    ],
    "OpenTelemetry": [
        ("enabled", "bool", "false"),
        ("api", "bool", "false"),
        ("consuming", "bool", "false"),
        ("google_cloud_adc_auth", "bool", "false"),
    ],
    "HttpAPI": [
        ("disabled", "bool", "false"),
        ("handler_prefix", "string", "/api"),
        ("key", "string", ""),
        ("error_mode", "string", ""),
        ("external", "bool", "false"),
        ("insecure", "bool", "false"),
    ],
    "GrpcAPI": [
        ("enabled", "bool", "false"),
        ("error_mode", "string", ""),
        ("address", "string", ""),
        ("port", "int", "10000"),
        ("key", "string", ""),
        ("tls", "TLSConfig", None),
        ("reflection", "bool", "false"),
        ("max_receive_message_size", "int", "0"),
    ],
    "Graphite": [
        ("enabled", "bool", "false"),
        ("host", "string", "localhost"),
        ("port", "int", "2003"),
        ("prefix", "string", "centrifugo"),
        ("interval", "duration", "10s"),
        ("tags", "bool", "false"),
    ],
    "Emulation": [
        ("handler_prefix", "string", "/emulation"),
        ("max_request_body_size", "int", "65536"),
    ],
    "UsageStats": [("disabled", "bool", "false")],
    "Prometheus": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", "/metrics"),
        ("instrument_http_handlers", "bool", "false"),
        ("recovered_publications_histogram", "bool", "false"),
        ("native_histograms", "bool", "false"),
    ],
    "Health": [("enabled", "bool", "false"), ("handler_prefix", "string", "/health")],
    "Swagger": [("enabled", "bool", "false"), ("handler_prefix", "string", "/swagger")],
    "Debug": [("enabled", "bool", "false"), ("handler_prefix", "string", "/debug/pprof")],
    "Dev": [("enabled", "bool", "false"), ("handler_prefix", "string", "/dev")],
    "Shutdown": [("timeout", "duration", "30s")],
    "ConnectProxy": [("enabled", "bool", "false"), ("", "squash:Proxy", None)],
    "RefreshProxy": [("enabled", "bool", "false"), ("", "squash:Proxy", None)],
    "ClientProxyContainer": [("connect", "ConnectProxy", None), ("refresh", "RefreshProxy", None)],
    "Client": [
        ("proxy", "ClientProxyContainer", None),
        ("allowed_origins", "[]string", "[]"),
        ("token", "Token", None),
        ("subscription_token", "SubscriptionToken", None),
        ("allow_anonymous_connect_without_token", "bool", "false"),
        ("disallow_anonymous_connection_tokens", "bool", "false"),
        ("", "squash:PingPong", None),
        ("expired_close_delay", "duration", "25s"),
        ("expired_sub_close_delay", "duration", "25s"),
        ("stale_close_delay", "duration", "10s"),
        ("channel_limit", "int", "128"),
        ("queue_max_size", "int", "1048576"),
        ("presence_update_interval", "duration", "27s"),
        ("concurrency", "int", "0"),
        ("channel_position_check_delay", "duration", "40s"),
        ("channel_position_max_time_lag", "duration", "0s"),
        ("connection_limit", "int", "0"),
        ("user_connection_limit", "int", "0"),
        ("connection_rate_limit", "int", "0"),
        ("connect_include_server_time", "bool", "false"),
        ("history_max_publication_limit", "int", "300"),
        ("recovery_max_publication_limit", "int", "300"),
        ("insecure_skip_token_signature_verify", "bool", "false"),
        ("user_id_http_header", "string", ""),
        ("insecure", "bool", "false"),
        ("subscribe_to_user_personal_channel", "SubscribeToUserPersonalChannel", None),
        ("connect_code_to_unidirectional_disconnect", "ConnectCodeToUnidirectionalDisconnect", None),
    ],
    "ConnectCodeToUnidirectionalDisconnect": [
        ("enabled", "bool", "false"),
        ("transforms", "[]UniConnectCodeToDisconnectTransform", None),
    ],
    "UniConnectCodeToDisconnectTransform": [("code", "int", "0"), ("to", "TransformDisconnect", None)],
    "ChannelProxyContainer": [
        ("subscribe", "Proxy", None),
        ("publish", "Proxy", None),
        ("sub_refresh", "Proxy", None),
        ("subscribe_stream", "Proxy", None),
        ("map_publish", "Proxy", None),
        ("map_remove", "Proxy", None),
        ("shared_poll_refresh", "Proxy", None),
    ],
    "Channel": [
        ("proxy", "ChannelProxyContainer", None),
        ("without_namespace", "ChannelOptions", None),
        ("namespaces", "[]ChannelNamespace", None),
        ("history_meta_ttl", "duration", "720h"),
        ("publication_data_format", "string", ""),
        ("max_length", "int", "255"),
        ("private_prefix", "string", "$"),
        ("namespace_boundary", "string", ":"),
        ("user_boundary", "string", "#"),
        ("user_separator", "string", ","),
    ],
    "ChannelNamespace": [("name", "string", ""), ("", "squash:ChannelOptions", None)],
    "ChannelOptions": [
        ("presence", "bool", "false"),
        ("join_leave", "bool", "false"),
        ("force_push_join_leave", "bool", "false"),
        ("history_size", "int", "0"),
        ("history_ttl", "duration", "0s"),
        ("history_meta_ttl", "duration", "0s"),
        ("force_positioning", "bool", "false"),
        ("allow_positioning", "bool", "false"),
        ("force_recovery", "bool", "false"),
        ("allow_recovery", "bool", "false"),
        ("force_recovery_mode", "string", ""),
        ("allowed_delta_types", "[]string", "[]"),
        ("allow_tags_filter", "bool", "false"),
        ("delta_publish", "bool", "false"),
        ("allow_subscribe_for_anonymous", "bool", "false"),
        ("allow_subscribe_for_client", "bool", "false"),
        ("allow_publish_for_anonymous", "bool", "false"),
        ("allow_publish_for_subscriber", "bool", "false"),
        ("allow_publish_for_client", "bool", "false"),
        ("allow_presence_for_anonymous", "bool", "false"),
        ("allow_presence_for_subscriber", "bool", "false"),
        ("allow_presence_for_client", "bool", "false"),
        ("allow_history_for_anonymous", "bool", "false"),
        ("allow_history_for_subscriber", "bool", "false"),
        ("allow_history_for_client", "bool", "false"),
        ("allow_user_limited_channels", "bool", "false"),
        ("channel_regex", "string", ""),
        ("publication_data_format", "string", ""),
        ("subscribe_proxy_enabled", "bool", "false"),
        ("subscribe_proxy_name", "string", "default"),
        ("publish_proxy_enabled", "bool", "false"),
        ("publish_proxy_name", "string", "default"),
        ("sub_refresh_proxy_enabled", "bool", "false"),
        ("sub_refresh_proxy_name", "string", "default"),
        ("subscribe_stream_proxy_enabled", "bool", "false"),
        ("subscribe_stream_proxy_name", "string", "default"),
        ("subscribe_stream_proxy_bidirectional", "bool", "false"),
        ("subscription_type", "string", ""),
        ("map_sync_mode", "string", ""),
        ("map_retention_mode", "string", ""),
        ("map_key_ttl", "duration", "0s"),
        ("map_ordered", "bool", "false"),
        ("map_stream_size", "int", "0"),
        ("map_stream_ttl", "duration", "0s"),
        ("map_meta_ttl", "duration", "0s"),
        ("map_client_presence_namespace", "string", ""),
        ("map_user_presence_namespace", "string", ""),
        ("map_remove_client_on_unsubscribe", "bool", "false"),
        ("allow_map_publish_for_anonymous", "bool", "false"),
        ("allow_map_publish_for_subscriber", "bool", "false"),
        ("allow_map_publish_for_client", "bool", "false"),
        ("map_publish_proxy_enabled", "bool", "false"),
        ("map_publish_proxy_name", "string", "default"),
        ("allow_map_remove_for_anonymous", "bool", "false"),
        ("allow_map_remove_for_subscriber", "bool", "false"),
        ("allow_map_remove_for_client", "bool", "false"),
        ("map_remove_proxy_enabled", "bool", "false"),
        ("map_remove_proxy_name", "string", "default"),
        ("map_client_key", "string", ""),
        # Newer development versions nest the map settings and add shared poll options.
        ("map", "object", "{}"),
        ("shared_poll", "object", "{}"),
    ],
    "RPC": [
        ("proxy", "Proxy", None),
        ("without_namespace", "RpcOptions", None),
        ("namespaces", "[]RpcNamespace", None),
        ("ping", "RPCPing", None),
        ("namespace_boundary", "string", ":"),
    ],
    "RPCPing": [("enabled", "bool", "false"), ("method", "string", "ping")],
    "RpcNamespace": [("name", "string", ""), ("", "squash:RpcOptions", None)],
    "RpcOptions": [("proxy_enabled", "bool", "false"), ("proxy_name", "string", "default")],
    "NamedProxy": [("name", "string", ""), ("", "squash:Proxy", None)],
    "SubscribeToUserPersonalChannel": [
        ("enabled", "bool", "false"),
        ("personal_channel_namespace", "string", ""),
        ("single_connection", "bool", "false"),
    ],
    "Node": [("name", "string", ""), ("info_metrics_aggregate_interval", "duration", "60s")],
    "Admin": [
        ("enabled", "bool", "false"),
        ("handler_prefix", "string", ""),
        ("password", "string", ""),
        ("secret", "string", ""),
        ("insecure", "bool", "false"),
        ("web_path", "string", ""),
        ("web_proxy_address", "string", ""),
        ("external", "bool", "false"),
    ],
    "TransformError": [("code", "int", "0"), ("message", "string", ""), ("temporary", "bool", "false")],
    "TransformDisconnect": [("code", "int", "0"), ("reason", "string", "")],
    "HttpStatusToCodeTransform": [
        ("status_code", "int", "0"),
        ("to_error", "TransformError", None),
        ("to_disconnect", "TransformDisconnect", None),
    ],
    "ProxyCommonHTTP": [
        ("tls", "TLSConfig", None),
        ("static_headers", "map", "{}"),
        ("status_to_code_transforms", "[]HttpStatusToCodeTransform", None),
    ],
    "ProxyCommonGRPC": [
        ("tls", "TLSConfig", None),
        ("credentials_key", "string", ""),
        ("credentials_value", "string", ""),
        ("compression", "bool", "false"),
        ("static_metadata", "map", "{}"),
    ],
    "ProxyCommon": [
        ("http_headers", "[]string", "[]"),
        ("grpc_metadata", "[]string", "[]"),
        ("emulated_headers", "[]string", "[]"),
        ("binary_encoding", "bool", "false"),
        ("include_connection_meta", "bool", "false"),
        ("http", "ProxyCommonHTTP", None),
        ("grpc", "ProxyCommonGRPC", None),
    ],
    "Proxy": [
        ("endpoint", "string", ""),
        ("timeout", "duration", "1s"),
        ("", "squash:ProxyCommon", None),
    ],
    "Consumer": [
        ("name", "string", ""),
        ("enabled", "bool", "false"),
        ("type", "string", ""),
        ("postgresql", "object", "{}"),
        ("kafka", "object", "{}"),
        ("nats_jetstream", "object", "{}"),
        ("redis_stream", "object", "{}"),
        ("google_pub_sub", "object", "{}"),
        ("aws_sqs", "object", "{}"),
        ("azure_service_bus", "object", "{}"),
    ],
    "Redis": [
        ("address", "[]string", '["redis://127.0.0.1:6379"]'),
        ("prefix", "string", "centrifugo"),
        ("connect_timeout", "duration", "1s"),
        ("io_timeout", "duration", "4s"),
        ("db", "int", "0"),
        ("user", "string", ""),
        ("password", "string", ""),
        ("client_name", "string", ""),
        ("force_resp2", "bool", "false"),
        ("cluster_address", "[]string", "[]"),
        ("sentinel_address", "[]string", "[]"),
        ("sentinel_user", "string", ""),
        ("sentinel_password", "string", ""),
        ("sentinel_master_name", "string", ""),
        ("sentinel_client_name", "string", ""),
        ("tls", "TLSConfig", None),
        ("sentinel_tls", "TLSConfig", None),
    ],
    "RedisBrokerCommon": [("history_use_lists", "bool", "false")],
    "RedisPresenceManagerCommon": [
        ("presence_ttl", "duration", "60s"),
        ("presence_hash_field_ttl", "bool", "false"),
        ("presence_user_mapping", "bool", "false"),
    ],
    "RedisEngine": [
        ("", "squash:Redis", None),
        ("", "squash:RedisBrokerCommon", None),
        ("", "squash:RedisPresenceManagerCommon", None),
    ],
    "RedisBroker": [("", "squash:Redis", None), ("", "squash:RedisBrokerCommon", None)],
    "RedisPresenceManager": [("", "squash:Redis", None), ("", "squash:RedisPresenceManagerCommon", None)],
    "Engine": [("type", "string", "memory"), ("redis", "RedisEngine", None)],
    "Broker": [
        ("enabled", "bool", "false"),
        ("type", "string", "memory"),
        ("redis", "RedisBroker", None),
        ("nats", "NatsBroker", None),
        ("postgres", "object", "{}"),
        ("redisnats", "object", "{}"),
    ],
    "PresenceManager": [
        ("enabled", "bool", "false"),
        ("type", "string", "memory"),
        ("redis", "RedisPresenceManager", None),
    ],
    "MapBroker": [
        ("type", "string", "memory"),
        ("redis", "object", "{}"),
        ("postgres", "object", "{}"),
    ],
}

PRIMITIVES = {"bool", "int", "string", "duration", "[]string", "map", "object"}


def expand(struct, prefix, out):
    for key, typ, default in S[struct]:
        if typ.startswith("squash:"):
            expand(typ[len("squash:"):], prefix, out)
            continue
        path = f"{prefix}{key}"
        if typ in PRIMITIVES:
            out.append((path, typ, default))
        elif typ.startswith("[]"):
            out.append((path, "[]object", "[]"))
            expand(typ[2:], f"{path}[].", out)
        else:
            expand(typ, f"{path}.", out)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tsv = os.path.join(root, "crates", "gyre-server", "src", "centrifugo_v6_keys.tsv")
    old = {}
    if os.path.exists(tsv):
        with open(tsv) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                cols = line.rstrip("\n").split("\t")
                old[cols[0]] = cols[3]
    rows = []
    expand("Config", "", rows)
    seen = set()
    for path, _, _ in rows:
        if path in seen:
            sys.exit(f"duplicate key {path}")
        seen.add(path)
    with open(tsv, "w") as f:
        f.write("# Centrifugo v6 configuration keys: key<TAB>type<TAB>default<TAB>status.\n")
        f.write("# Generated by tools/gen_centrifugo_v6_keys.py; edit the status column only.\n")
        f.write(COMPLETENESS)
        for path, typ, default in rows:
            f.write(f"{path}\t{typ}\t{default}\t{old.get(path, 'refused')}\n")
    print(f"{len(rows)} keys written to {os.path.relpath(tsv, root)}")


if __name__ == "__main__":
    main()
