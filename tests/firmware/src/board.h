/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Per-core facts (HACKING.md, "Board memory maps"). The Makefile defines one
 * of CORE_M4, CORE_M33, CORE_M0; the memory regions themselves are in
 * ld/<core>.ld.
 */
#ifndef BOARD_H
#define BOARD_H

#if defined(CORE_M4)		/* STM32MP157F-DK, Cortex-M4 */
#define CORE_NAME	"m4"
#define HAVE_VDEV	1
#define VRING0_DA	0x10040000u	/* vdev0vring0 */
#define VRING1_DA	0x10041000u	/* vdev0vring1 */
#elif defined(CORE_M33)		/* STM32MP257F-DK, Cortex-M33 */
#define CORE_NAME	"m33"
#define HAVE_VDEV	1
#define VRING0_DA	0x81800000u
#define VRING1_DA	0x81801000u
#elif defined(CORE_M0)		/* STM32MP257F-DK, Cortex-M0+: no IPCC, no vdev */
#define CORE_NAME	"m0"
#define HAVE_VDEV	0
#else
#error "define CORE_M4, CORE_M33 or CORE_M0"
#endif

#define TRACE_BUF_SIZE	4096

/* The log the host reads through the RSC_TRACE entry (debugfs trace0). */
extern volatile char trace_buf[TRACE_BUF_SIZE];

#endif /* BOARD_H */
