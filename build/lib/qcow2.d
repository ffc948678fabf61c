build/lib/qcow2.o: lib/qcow2.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
