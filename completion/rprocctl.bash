# bash completion for rprocctl(1); installed as
# /usr/share/bash-completion/completions/rprocctl (loaded on first use).
#
# Processor names come from sysfs (kernel names and remoteprocN), not from
# the daemon: completion must be instant and work when rprocd is not running.
# Coredump IDs come from the default coredump directory when it is readable
# (root's); another CoredumpDirectory= is not looked up.
# The command list mirrors `rprocctl --help`; tests/integration/test_packaging.py
# checks that the two agree.

_rprocctl_processors() {
    local dev
    for dev in /sys/class/remoteproc/remoteproc*; do
        [ -r "$dev/name" ] || continue
        cat "$dev/name" 2>/dev/null
        printf '%s\n' "${dev##*/}"
    done
}

_rprocctl_coredumps() {
    local f
    for f in "${STATE_DIRECTORY:-/var/lib/rprocd}"/coredump/*.json; do
        [ -r "$f" ] || continue
        f=${f##*/}
        printf '%s\n' "${f%.json}"
    done
}

_rprocctl() {
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD - 1]}
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
    fi

    local commands="list status start stop restart detach recover reset-failed inspect logs coredump monitor reload"
    local options="--json --timeout --help"

    case $prev in
        --timeout) return ;;  # a number of seconds
        --buffer) COMPREPLY=($(compgen -W "trace0 trace1" -- "$cur")); return ;;
        -o|--output)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
    esac

    # The command is the first word that is not an option (nor an option's value).
    local i command="" nargs=0
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            --timeout|--buffer|-o|--output) ((i++)) ;;
            -*) ;;
            *) if [ -z "$command" ]; then command=${words[i]}; else ((nargs++)); fi ;;
        esac
    done

    if [[ $cur == -* ]]; then
        case $command in
            logs) options="$options -f --follow --buffer" ;;
            coredump) options="--json --help -o --output" ;;
        esac
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
        return
    fi
    if [ -z "$command" ]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        return
    fi

    case $command in
        coredump)
            # nargs counts the action (list, show, export) as the first argument.
            if [ "$nargs" -eq 0 ]; then
                COMPREPLY=($(compgen -W "list show export" -- "$cur"))
            elif [ "$nargs" -eq 1 ]; then
                local action
                for ((i = 1; i < cword; i++)); do
                    case ${words[i]} in list|show|export) action=${words[i]}; break ;; esac
                done
                case $action in
                    list) COMPREPLY=($(compgen -W "$(_rprocctl_processors)" -- "$cur")) ;;
                    show|export) COMPREPLY=($(compgen -W "$(_rprocctl_coredumps)" -- "$cur")) ;;
                esac
            fi ;;
        status|stop|detach|recover|reset-failed|logs)
            [ "$nargs" -eq 0 ] && COMPREPLY=($(compgen -W "$(_rprocctl_processors)" -- "$cur")) ;;
        start|restart)
            if [ "$nargs" -eq 0 ]; then
                COMPREPLY=($(compgen -W "$(_rprocctl_processors)" -- "$cur"))
            elif [ "$nargs" -eq 1 ]; then
                compopt -o filenames 2>/dev/null
                COMPREPLY=($(compgen -f -- "$cur"))  # a local image; names need the daemon
            fi ;;
        inspect)
            if [ "$nargs" -eq 0 ]; then
                compopt -o filenames 2>/dev/null
                COMPREPLY=($(compgen -f -- "$cur"))
            fi ;;
    esac
}

complete -F _rprocctl rprocctl
