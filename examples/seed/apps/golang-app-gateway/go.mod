module meshpath.example/seed/golang-app-gateway

// 1.19: the oldest Go a fresh Debian 12 installs (golang-go); standard library only.
go 1.19
