# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_siptap_global_optspecs
    string join \n h/help V/version
end

function __fish_siptap_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_siptap_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_siptap_using_subcommand
    set -l cmd (__fish_siptap_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c siptap -n "__fish_siptap_needs_command" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_needs_command" -s V -l version -d 'Print version'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "replay" -d 'Read pcap/pcapng captures as one timeline and print the derived events as JSON lines'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "flush" -d 'Deliver what is left in the outbox of a state directory'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "deliver" -d 'Cluster mode: a delivery worker only. Takes events from the cluster\'s stream (shared with every other worker) and sends them to Firebase, acknowledging each after its 2xx; runs until SIGTERM or Ctrl-C, or until the stream has been idle for --until-idle seconds'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "validate" -d 'Build the Measurement Protocol requests for a capture\'s events (or one sample event of each kind per tenant) and check them locally; with --remote also against each tenant\'s /debug/mp/collect, printing its validation messages'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "run" -d 'Run as a daemon: live capture (libpcap) and/or HEP input, events to the Firebase outbox or JSON lines, Prometheus metrics on localhost. SIGHUP reloads the configuration, SIGTERM stops'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "status" -d 'One-screen summary from a running siptap\'s metrics endpoint'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "reload" -d 'Check a configuration and, when it is good, tell the running siptap (SIGHUP) to load it; exit status 1 and every error when it is not (systemd\'s ExecReload: `systemctl reload` then fails instead of reporting success while the old configuration keeps running)'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "report" -d 'Write the HTML page of what a `siptap run` derived (the counts it keeps in its state directory, saved once a minute): the same page as `replay --report`'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "man" -d 'Write the manual pages (siptap.1 and one per command), generated from this command line'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "check-config" -d 'Check a configuration file and exit: every error in it (file:line: key: message), then the warnings. Exit status 0 when it would run, 1 when not'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "outbox" -d 'What the outbox holds per tenant and state (queued, refused, invalid, too old, dropped), with the server\'s answers; `requeue` and `drop` fix it. Works beside a running daemon'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "seed-users" -d 'Add existing users (one address of record `user@domain` per line; `-` for stdin) to the known-users store, so that they do not `signup` when siptap is first deployed'
complete -c siptap -n "__fish_siptap_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l config -d 'The TOML configuration' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l state -d 'State directory holding the known-users store; without it replay starts empty and keeps nothing' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l send-timeout -d 'With --send: how long to keep trying before leaving the rest in the outbox' -r
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l threads -d 'Threads: 2 reads, decodes and parses on one and follows the state on the other (the same events, in the same order); 1 does everything on one. Default: 2 when the machine has two cores or more' -r
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l pause-every -d 'A benchmark\'s aid, with --threads 1: after every N frames, sleep MS milliseconds (the cadence of a live capture\'s batches; the events are the same)' -r
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l report -d 'Also write a self-contained HTML page of what was derived (per tenant: events over time, registrations, call outcomes; the counters that explain what was not an event)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l stats -d 'Print every counter (skipped, malformed, evicted...) on stderr at the end'
complete -c siptap -n "__fish_siptap_using_subcommand replay" -l send -d 'Also deliver the events of tenants with Firebase settings (needs --state: the outbox lives there, so nothing is lost if delivery is interrupted)'
complete -c siptap -n "__fish_siptap_using_subcommand replay" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand flush" -l config -d 'The TOML configuration (the tenants\' Firebase settings)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand flush" -l state -d 'The state directory whose outbox to deliver' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand flush" -l timeout -d 'Seconds to keep trying before leaving the rest in the outbox' -r
complete -c siptap -n "__fish_siptap_using_subcommand flush" -l stats -d 'Print the delivery counters (requests, events, errors, latency) on stderr at the end'
complete -c siptap -n "__fish_siptap_using_subcommand flush" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand deliver" -l config -d 'The TOML configuration (its [cluster] and the tenants\' Firebase settings)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand deliver" -l state -d 'Where the cluster\'s keys are cached (default: run.state_dir)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand deliver" -l until-idle -d 'Stop once the stream has had nothing to deliver for this many seconds' -r
complete -c siptap -n "__fish_siptap_using_subcommand deliver" -l tenant -d 'With --requeue-rejected: only this tenant\'s events' -r
complete -c siptap -n "__fish_siptap_using_subcommand deliver" -l stats -d 'Print the delivery and cluster counters on stderr at the end'
complete -c siptap -n "__fish_siptap_using_subcommand deliver" -l requeue-rejected -d 'Instead of delivering: put the events of the cluster\'s rejected stream (refused by Firebase, invalid, too old) back into the event stream, and exit'
complete -c siptap -n "__fish_siptap_using_subcommand deliver" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand validate" -l config -d 'The TOML configuration' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand validate" -l remote -d 'Also send each request to the tenant\'s /debug/mp/collect (needs the network; sends nothing that counts)'
complete -c siptap -n "__fish_siptap_using_subcommand validate" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand run" -l config -d 'The TOML configuration' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand run" -l state -d 'Overrides run.state_dir' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand run" -l allow-root -d 'Run even as root (not recommended: siptap needs only CAP_NET_RAW)'
complete -c siptap -n "__fish_siptap_using_subcommand run" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand status" -l metrics -d 'The running siptap\'s metrics endpoint (run.metrics_listen)' -r
complete -c siptap -n "__fish_siptap_using_subcommand status" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand reload" -l config -d 'The TOML configuration the daemon runs with' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand reload" -l pid -d 'The daemon\'s process id ($MAINPID under systemd)' -r
complete -c siptap -n "__fish_siptap_using_subcommand reload" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand report" -l state -d 'The daemon\'s state directory' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand report" -l output -d 'The page to write' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand report" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand man" -l dir -d 'Directory to write them to' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand man" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand completions" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand check-config" -l config -d 'The TOML configuration to check' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and not __fish_seen_subcommand_from requeue drop help" -l state -d 'The state directory (with outbox.redb)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and not __fish_seen_subcommand_from requeue drop help" -l json -d 'Print JSON'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and not __fish_seen_subcommand_from requeue drop help" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and not __fish_seen_subcommand_from requeue drop help" -f -a "requeue" -d 'Queue rejected events again (after fixing what made them fail); by default the refused and invalid ones'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and not __fish_seen_subcommand_from requeue drop help" -f -a "drop" -d 'Drop events for good (asks for --yes)'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and not __fish_seen_subcommand_from requeue drop help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from requeue" -l tenant -d 'Only this tenant\'s' -r
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from requeue" -l state -d 'The state directory (with outbox.redb)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from requeue" -l rejected -d 'Refused by the endpoint (4xx) or invalid'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from requeue" -l too-old -d 'Older than 72 hours when sent (GA4 will still refuse them unless their time is fixed)'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from requeue" -l dropped -d 'Pushed out of a full outbox (when_full = drop_oldest)'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from requeue" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l tenant -d 'Only this tenant\'s' -r
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l state -d 'The state directory (with outbox.redb)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l queued -d 'Events still queued'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l rejected -d 'Refused by the endpoint (4xx) or invalid'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l too-old -d 'Older than 72 hours when sent'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l dropped -d 'Pushed out of a full outbox'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l all -d 'Everything above'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -l yes -d 'Really do it'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from drop" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "requeue" -d 'Queue rejected events again (after fixing what made them fail); by default the refused and invalid ones'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "drop" -d 'Drop events for good (asks for --yes)'
complete -c siptap -n "__fish_siptap_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c siptap -n "__fish_siptap_using_subcommand seed-users" -l state -d 'The state directory (its known-users store)' -r -F
complete -c siptap -n "__fish_siptap_using_subcommand seed-users" -s h -l help -d 'Print help'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "replay" -d 'Read pcap/pcapng captures as one timeline and print the derived events as JSON lines'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "flush" -d 'Deliver what is left in the outbox of a state directory'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "deliver" -d 'Cluster mode: a delivery worker only. Takes events from the cluster\'s stream (shared with every other worker) and sends them to Firebase, acknowledging each after its 2xx; runs until SIGTERM or Ctrl-C, or until the stream has been idle for --until-idle seconds'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "validate" -d 'Build the Measurement Protocol requests for a capture\'s events (or one sample event of each kind per tenant) and check them locally; with --remote also against each tenant\'s /debug/mp/collect, printing its validation messages'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "run" -d 'Run as a daemon: live capture (libpcap) and/or HEP input, events to the Firebase outbox or JSON lines, Prometheus metrics on localhost. SIGHUP reloads the configuration, SIGTERM stops'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "status" -d 'One-screen summary from a running siptap\'s metrics endpoint'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "reload" -d 'Check a configuration and, when it is good, tell the running siptap (SIGHUP) to load it; exit status 1 and every error when it is not (systemd\'s ExecReload: `systemctl reload` then fails instead of reporting success while the old configuration keeps running)'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "report" -d 'Write the HTML page of what a `siptap run` derived (the counts it keeps in its state directory, saved once a minute): the same page as `replay --report`'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "man" -d 'Write the manual pages (siptap.1 and one per command), generated from this command line'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "completions" -d 'Print a shell completion script'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "check-config" -d 'Check a configuration file and exit: every error in it (file:line: key: message), then the warnings. Exit status 0 when it would run, 1 when not'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "outbox" -d 'What the outbox holds per tenant and state (queued, refused, invalid, too old, dropped), with the server\'s answers; `requeue` and `drop` fix it. Works beside a running daemon'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "seed-users" -d 'Add existing users (one address of record `user@domain` per line; `-` for stdin) to the known-users store, so that they do not `signup` when siptap is first deployed'
complete -c siptap -n "__fish_siptap_using_subcommand help; and not __fish_seen_subcommand_from replay flush deliver validate run status reload report man completions check-config outbox seed-users help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c siptap -n "__fish_siptap_using_subcommand help; and __fish_seen_subcommand_from outbox" -f -a "requeue" -d 'Queue rejected events again (after fixing what made them fail); by default the refused and invalid ones'
complete -c siptap -n "__fish_siptap_using_subcommand help; and __fish_seen_subcommand_from outbox" -f -a "drop" -d 'Drop events for good (asks for --yes)'
