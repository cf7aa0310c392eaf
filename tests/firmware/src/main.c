/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The firmware's work: a log line into the trace buffer now and then. The
 * host reads the buffer as a NUL-terminated string (debugfs trace0).
 * Lines may start with a syslog priority such as "<6>".
 */
#include <stdint.h>

#include "board.h"

#define DELAY_LOOPS	1000000u

volatile char trace_buf[TRACE_BUF_SIZE];
static uint32_t trace_pos;

static void trace_putc(char c)
{
	if (trace_pos >= TRACE_BUF_SIZE - 1)
		trace_pos = 0;		/* full: start over */
	trace_buf[trace_pos++] = c;
	trace_buf[trace_pos] = '\0';
}

static void trace_puts(const char *s)
{
	while (*s)
		trace_putc(*s++);
}

static void trace_putu(uint32_t n)
{
	char digits[10];
	int i = 0;

	do {
		digits[i++] = (char)('0' + n % 10);
		n /= 10;
	} while (n);
	while (i)
		trace_putc(digits[--i]);
}

static void delay(void)
{
	for (volatile uint32_t i = 0; i < DELAY_LOOPS; i++)
		;
}

int main(void)
{
	trace_puts("<6>" CORE_NAME ": rprocd test firmware started\n");
	for (uint32_t n = 1;; n++) {
		delay();
		trace_puts(CORE_NAME ": tick ");
		trace_putu(n);
		trace_putc('\n');
	}
}
