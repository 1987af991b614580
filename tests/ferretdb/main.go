// Command ferretdb-embedded runs FerretDB (MongoDB wire protocol) with the
// SQLite backend, for use by the test suite.
//
// It is a thin wrapper around the embeddable package
// github.com/FerretDB/FerretDB/ferretdb; building FerretDB's own cmd from the
// module cache panics because of a missing generated version file.
//
// Usage:
//
//	ferretdb-embedded -listen-addr 127.0.0.1:27017 -state-dir /tmp/fdb [-log-level error] [-exit-on-stdin-close]
//
// Once the TCP listener is bound it prints exactly one line to stdout:
//
//	ready 127.0.0.1:27017
//
// (with the actual port when -listen-addr uses port 0). Logs go to stderr.
// It exits with status 0 on SIGTERM/SIGINT: at once when no client is
// connected, else after at most -shutdown-timeout (default 1s).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listenAddr := flag.String("listen-addr", "127.0.0.1:27017", "TCP `host:port` to listen on (port 0 picks a free port)")
	stateDir := flag.String("state-dir", "", "`directory` for SQLite database files (created if missing; required)")
	logLevel := flag.String("log-level", "error", "log level: debug, info, warn, error (warn logs every error reply sent to clients)")
	exitOnStdinClose := flag.Bool("exit-on-stdin-close", false, "also stop when stdin reaches EOF (start with a stdin pipe so that the parent's death stops this process; with /dev/null it exits at once)")
	shutdownTimeout := flag.Duration("shutdown-timeout", time.Second, "on SIGTERM/SIGINT, how long to wait for open client connections before exiting anyway (FerretDB itself gives clients 3s)")
	flag.Parse()

	if err := run(*listenAddr, *stateDir, *logLevel, *exitOnStdinClose, *shutdownTimeout); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-embedded: %s\n", err)
		os.Exit(1)
	}
}

func run(listenAddr, stateDir, logLevel string, exitOnStdinClose bool, shutdownTimeout time.Duration) error {
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	}

	if stateDir == "" {
		return errors.New("-state-dir is required")
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("invalid -log-level %q: %w", logLevel, err)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}

	if err = os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	// FerretDB requires a "file:" URI for a directory, with a trailing slash.
	sqliteURL := (&url.URL{Scheme: "file", OmitHost: true, Path: strings.TrimSuffix(dir, "/") + "/"}).String()

	f, err := ferretdb.New(&ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: listenAddr},
		Logger:   logger,
		Handler:  "sqlite",
		// FerretDB ignores PostgreSQLURL for the sqlite handler.
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if exitOnStdinClose {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)

		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel()
		}()
	}

	done := make(chan struct{})

	go func() {
		defer close(done)
		_ = f.Run(ctx)
	}()

	// ferretdb.New has already bound the TCP listener; connections are
	// queued by the kernel until Run's accept loop picks them up.
	u, err := url.Parse(f.MongoDBURI())
	if err != nil {
		return err
	}

	if _, _, err = net.SplitHostPort(u.Host); err != nil {
		return fmt.Errorf("unexpected listener address %q: %w", u.Host, err)
	}

	fmt.Printf("ready %s\n", u.Host)

	<-ctx.Done()
	stop() // a second signal kills the process with the default action

	// FerretDB closes idle client connections only after a 3s grace period.
	// Exiting earlier is safe: every SQLite commit is atomic and durable.
	select {
	case <-done:
	case <-time.After(shutdownTimeout):
		logger.Warn("client connections still open; exiting without waiting for them", slog.Duration("shutdown-timeout", shutdownTimeout))
	}

	return nil
}
