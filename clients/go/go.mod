module mecha.dev/client

go 1.19
