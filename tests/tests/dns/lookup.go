// Go's own resolver (not glibc's): reads /etc/resolv.conf itself, applies the search list and
// sends its own UDP queries. Prints one address per line.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
)

func main() {
	r := &net.Resolver{PreferGo: true}
	addrs, err := r.LookupHost(context.Background(), os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
}
