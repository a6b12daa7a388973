module tokentrail/tools/jaeger

go 1.25
