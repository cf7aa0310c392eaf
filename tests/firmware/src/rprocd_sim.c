/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The behaviour script read by rprocd's board emulator (HACKING.md, "Firmware
 * behaviour script"): NUL-terminated `key=value` lines in the section
 * `.rprocd_sim`, which the linker script marks as not allocated, so the host
 * never loads it and real hardware never sees it.
 *
 * The Makefile varies the numbers per image with -DSIM_<KEY>=N.
 */
#include "board.h"

#define STR_(x)	#x
#define STR(x)	STR_(x)

#ifndef SIM_BOOT_MS
#define SIM_BOOT_MS		20
#endif
#ifndef SIM_SHUTDOWN_ACK_MS
#define SIM_SHUTDOWN_ACK_MS	5	/* -1: never acknowledge */
#endif
#ifndef SIM_TRACE_PERIOD_MS
#define SIM_TRACE_PERIOD_MS	100	/* 0: only the boot banner */
#endif
#ifndef SIM_CRASH_AFTER_MS
#define SIM_CRASH_AFTER_MS	0	/* 0: never */
#endif
#ifndef SIM_CRASH_TYPE
#define SIM_CRASH_TYPE		1	/* 0 mmufault, 1 watchdog, 2 fatal error */
#endif

#if HAVE_VDEV
#define SIM_RPMSG	"rpmsg-tty"
#define SIM_RPMSG_TRACE	"trace=" CORE_NAME ": %n messages on " SIM_RPMSG "\n"
#else
#define SIM_RPMSG	""	/* no vdev, no channels */
#define SIM_RPMSG_TRACE	""
#endif

__attribute__((section(".rprocd_sim"), used))
static const char rprocd_sim[] =
	"boot_ms=" STR(SIM_BOOT_MS) "\n"
	"shutdown_ack_ms=" STR(SIM_SHUTDOWN_ACK_MS) "\n"
	"trace_period_ms=" STR(SIM_TRACE_PERIOD_MS) "\n"
	"crash_after_ms=" STR(SIM_CRASH_AFTER_MS) "\n"
	"crash_type=" STR(SIM_CRASH_TYPE) "\n"
	"rpmsg=" SIM_RPMSG "\n"
	"trace=<6>" CORE_NAME ": heartbeat %n\n"
	"trace=" CORE_NAME ": uptime %n s\n"
	SIM_RPMSG_TRACE
	"trace=<4>" CORE_NAME ": ADC sample %n late\n"
	"trace=<3>" CORE_NAME ": sensor timeout, retry %n\n";
